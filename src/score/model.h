/* model.h — the scorer's logistic-regression weights and default thresholds.
 * Written by src/score/fit_model.py (train split of bench/data/pairs.tsv,
 * sha1 63198325...); do not edit by hand. Feature order: cel_score_feature_name(). */
#ifndef CELERIAC_SCORE_MODEL_H
#define CELERIAC_SCORE_MODEL_H

#define CS_MODEL_VERSION "lr-2026-11-28-63198325-5f4e9f"
#define CS_MODEL_RPC_MIN 64
#define CS_MODEL_REVIEW_MIN 19

static const double cs_model_w[CEL_SCORE_NFEATURES] = {
    1.927231, /* bias */
    0.000000, /* g_exact */
    0.000000, /* g_nick */
    4.302401, /* g_trunc */
    2.571095, /* g_typo */
    -4.636403, /* g_phon */
    -2.663642, /* g_initial */
    -7.491514, /* g_similar */
    -10.182893, /* g_conflict */
    0.773902, /* g_jw */
    2.853601, /* s_exact */
    1.029879, /* s_partial */
    0.000000, /* s_trunc */
    0.762787, /* s_typo */
    0.698873, /* s_phon */
    -0.000181, /* s_initial */
    -1.985450, /* s_similar */
    -4.277666, /* s_conflict */
    0.417096, /* s_jw */
    0.428043, /* s_rarity */
    0.000000, /* g_rarity */
    4.346308, /* m_agree */
    0.000000, /* m_conflict */
    -10.037752, /* suffix_conflict */
    0.000000, /* swapped */
    0.000000, /* surname_only */
    -1.367390, /* given_only */
    -2.473748, /* sex_conflict */
    5.145005, /* g_weak_m_agree */
    0.192999, /* g_typo2 */
    1.597996, /* s_typo2 */
    -6.868516, /* g_edit2 */
    0.687552, /* s_edit2 */
};

#endif
