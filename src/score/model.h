/* model.h — the scorer's logistic-regression weights and default thresholds.
 * Written by src/score/fit_model.py (train split of bench/data/pairs.tsv,
 * sha1 63198325...); do not edit by hand. Feature order: cel_score_feature_name(). */
#ifndef CELERIAC_SCORE_MODEL_H
#define CELERIAC_SCORE_MODEL_H

#define CS_MODEL_VERSION "lr-2026-11-28-63198325"
#define CS_MODEL_RPC_MIN 64
#define CS_MODEL_REVIEW_MIN 17

static const double cs_model_w[CEL_SCORE_NFEATURES] = {
    2.309698, /* bias */
    0.000000, /* g_exact */
    0.000000, /* g_nick */
    4.765144, /* g_trunc */
    2.152573, /* g_typo */
    -4.519234, /* g_phon */
    -2.603066, /* g_initial */
    -7.511830, /* g_similar */
    -10.843176, /* g_conflict */
    3.161456, /* g_jw */
    2.375437, /* s_exact */
    0.618174, /* s_partial */
    2.906051, /* s_trunc */
    0.456030, /* s_typo */
    -0.006972, /* s_phon */
    0.047182, /* s_initial */
    -1.655567, /* s_similar */
    -4.938115, /* s_conflict */
    1.276602, /* s_jw */
    0.430734, /* s_rarity */
    0.000000, /* g_rarity */
    4.022407, /* m_agree */
    0.000000, /* m_conflict */
    -9.954915, /* suffix_conflict */
    0.000000, /* swapped */
    0.000000, /* surname_only */
    -1.364261, /* given_only */
    -2.700258, /* sex_conflict */
    4.871034, /* g_weak_m_agree */
    0.386045, /* g_typo2 */
    1.562043, /* s_typo2 */
};

#endif
