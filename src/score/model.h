/* model.h — the scorer's logistic-regression weights and default thresholds.
 * Written by src/score/fit_model.py (train split of bench/data/pairs.tsv,
 * sha1 63198325...); do not edit by hand. Feature order: cel_score_feature_name(). */
#ifndef CELERIAC_SCORE_MODEL_H
#define CELERIAC_SCORE_MODEL_H

#define CS_MODEL_VERSION "lr-2026-11-28-63198325-d40e33"
#define CS_MODEL_RPC_MIN 64
#define CS_MODEL_REVIEW_MIN 20

static const double cs_model_w[CEL_SCORE_NFEATURES] = {
    2.741581, /* bias */
    0.000000, /* g_exact */
    0.000000, /* g_nick */
    4.533870, /* g_trunc */
    2.411011, /* g_typo */
    -4.585144, /* g_phon */
    -2.546121, /* g_initial */
    -7.448310, /* g_similar */
    -10.133708, /* g_conflict */
    0.765254, /* g_jw */
    2.018896, /* s_exact */
    0.299479, /* s_partial */
    3.144099, /* s_trunc */
    -0.278341, /* s_typo */
    0.084954, /* s_phon */
    0.074520, /* s_initial */
    -2.761618, /* s_similar */
    -5.101738, /* s_conflict */
    0.425223, /* s_jw */
    0.392304, /* s_rarity */
    0.000000, /* g_rarity */
    4.510563, /* m_agree */
    0.000000, /* m_conflict */
    -9.965465, /* suffix_conflict */
    0.000000, /* swapped */
    0.000000, /* surname_only */
    0.000000, /* given_only */
    -2.468438, /* sex_conflict */
    5.224285, /* g_weak_m_agree */
    0.225987, /* g_typo2 */
    1.237069, /* s_typo2 */
    -6.796686, /* g_edit2 */
    -0.049522, /* s_edit2 */
};

#endif
