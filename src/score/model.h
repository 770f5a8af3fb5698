/* model.h — the scorer's logistic-regression weights and default thresholds.
 * Written by src/score/fit_model.py (train split of bench/data/pairs.tsv,
 * sha1 63198325...); do not edit by hand. Feature order: cel_score_feature_name(). */
#ifndef CELERIAC_SCORE_MODEL_H
#define CELERIAC_SCORE_MODEL_H

#define CS_MODEL_VERSION "lr-2026-11-28-63198325"
#define CS_MODEL_RPC_MIN 64
#define CS_MODEL_REVIEW_MIN 17

static const double cs_model_w[CEL_SCORE_NFEATURES] = {
    2.323710, /* bias */
    0.000000, /* g_exact */
    0.000000, /* g_nick */
    4.764725, /* g_trunc */
    2.148498, /* g_typo */
    -4.554111, /* g_phon */
    -2.625073, /* g_initial */
    -7.531773, /* g_similar */
    -10.861024, /* g_conflict */
    3.147980, /* g_jw */
    2.391491, /* s_exact */
    0.617358, /* s_partial */
    2.915959, /* s_trunc */
    0.459197, /* s_typo */
    0.000638, /* s_phon */
    0.046506, /* s_initial */
    -1.668337, /* s_similar */
    -4.951756, /* s_conflict */
    1.276217, /* s_jw */
    0.427751, /* s_rarity */
    0.000000, /* g_rarity */
    4.035413, /* m_agree */
    0.000000, /* m_conflict */
    -9.977700, /* suffix_conflict */
    0.000000, /* swapped */
    0.000000, /* surname_only */
    -1.373944, /* given_only */
    -2.701745, /* sex_conflict */
    4.879071, /* g_weak_m_agree */
    0.382734, /* g_typo2 */
    1.562891, /* s_typo2 */
};

#endif
