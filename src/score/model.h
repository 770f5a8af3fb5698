/* model.h — the scorer's logistic-regression weights and default thresholds.
 * Written by src/score/fit_model.py (train split of bench/data/pairs.tsv,
 * sha1 63198325...); do not edit by hand. Feature order: cel_score_feature_name(). */
#ifndef CELERIAC_SCORE_MODEL_H
#define CELERIAC_SCORE_MODEL_H

#define CS_MODEL_VERSION "lr-2026-11-28-63198325"
#define CS_MODEL_RPC_MIN 64
#define CS_MODEL_REVIEW_MIN 16

static const double cs_model_w[CEL_SCORE_NFEATURES] = {
    2.636067, /* bias */
    0.000000, /* g_exact */
    0.000000, /* g_nick */
    4.538256, /* g_trunc */
    2.419442, /* g_typo */
    -4.417655, /* g_phon */
    -2.453302, /* g_initial */
    -6.799156, /* g_similar */
    -10.196829, /* g_conflict */
    1.483146, /* g_jw */
    1.903620, /* s_exact */
    0.331254, /* s_partial */
    2.930614, /* s_trunc */
    -0.175860, /* s_typo */
    -0.124842, /* s_phon */
    0.081687, /* s_initial */
    -2.674186, /* s_similar */
    -5.002057, /* s_conflict */
    0.439629, /* s_jw */
    0.454267, /* s_rarity */
    0.000000, /* g_rarity */
    4.185442, /* m_agree */
    0.000000, /* m_conflict */
    -9.858638, /* suffix_conflict */
    0.000000, /* swapped */
    0.000000, /* surname_only */
    0.000000, /* given_only */
    -2.584175, /* sex_conflict */
    4.841431, /* g_weak_m_agree */
    -0.013495, /* g_typo2 */
    1.235953, /* s_typo2 */
    -7.204715, /* g_edit2 */
    0.025468, /* s_edit2 */
};

#endif
