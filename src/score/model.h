/* model.h — the scorer's logistic-regression weights and default thresholds.
 * Written by src/score/fit_model.py (train split of bench/data/pairs.tsv,
 * sha1 63198325...); do not edit by hand. Feature order: cel_score_feature_name(). */
#ifndef CELERIAC_SCORE_MODEL_H
#define CELERIAC_SCORE_MODEL_H

#define CS_MODEL_VERSION "lr-2026-11-28-63198325"
#define CS_MODEL_RPC_MIN 64
#define CS_MODEL_REVIEW_MIN 17

static const double cs_model_w[CEL_SCORE_NFEATURES] = {
    2.324384, /* bias */
    0.000000, /* g_exact */
    0.000000, /* g_nick */
    4.764710, /* g_trunc */
    2.148482, /* g_typo */
    -4.554642, /* g_phon */
    -2.622836, /* g_initial */
    -7.531515, /* g_similar */
    -10.860657, /* g_conflict */
    3.147336, /* g_jw */
    2.392055, /* s_exact */
    0.616951, /* s_partial */
    2.916893, /* s_trunc */
    0.459618, /* s_typo */
    0.001268, /* s_phon */
    0.046404, /* s_initial */
    -1.668896, /* s_similar */
    -4.952400, /* s_conflict */
    1.276139, /* s_jw */
    0.426657, /* s_rarity */
    0.000000, /* g_rarity */
    4.035888, /* m_agree */
    0.000000, /* m_conflict */
    -9.977170, /* suffix_conflict */
    0.000000, /* swapped */
    0.000000, /* surname_only */
    -1.374584, /* given_only */
    -2.701803, /* sex_conflict */
    4.879470, /* g_weak_m_agree */
    0.382692, /* g_typo2 */
    1.562695, /* s_typo2 */
};

#endif
