/* model.h — the scorer's logistic-regression weights and default thresholds.
 * Written by src/score/fit_model.py (train split of bench/data/pairs.tsv,
 * sha1 679036f9...); do not edit by hand. Feature order: cel_score_feature_name(). */
#ifndef CELERIAC_SCORE_MODEL_H
#define CELERIAC_SCORE_MODEL_H

#define CS_MODEL_VERSION "lr-2026-11-28-679036f9"
#define CS_MODEL_RPC_MIN 63
#define CS_MODEL_REVIEW_MIN 12

static const double cs_model_w[CEL_SCORE_NFEATURES] = {
    1.234014, /* bias */
    0.000000, /* g_exact */
    0.000000, /* g_nick */
    3.870733, /* g_trunc */
    2.898065, /* g_typo */
    -4.511521, /* g_phon */
    -2.298007, /* g_initial */
    -7.764155, /* g_similar */
    -10.938270, /* g_conflict */
    3.266187, /* g_jw */
    3.596806, /* s_exact */
    0.724202, /* s_partial */
    -0.466788, /* s_trunc */
    1.853791, /* s_typo */
    0.704185, /* s_phon */
    0.116129, /* s_initial */
    -0.361142, /* s_similar */
    -3.636328, /* s_conflict */
    0.543797, /* s_jw */
    0.171684, /* s_rarity */
    0.000000, /* g_rarity */
    5.093415, /* m_agree */
    0.000000, /* m_conflict */
    -9.710285, /* suffix_conflict */
    0.000000, /* swapped */
    0.000000, /* surname_only */
    -2.530854, /* given_only */
    -2.867211, /* sex_conflict */
};

#endif
