/* model.h — the scorer's logistic-regression weights and default thresholds.
 * Written by src/score/fit_model.py (train split of bench/data/pairs.tsv,
 * sha1 63198325...); do not edit by hand. Feature order: cel_score_feature_name(). */
#ifndef CELERIAC_SCORE_MODEL_H
#define CELERIAC_SCORE_MODEL_H

#define CS_MODEL_VERSION "lr-2026-11-28-63198325"
#define CS_MODEL_RPC_MIN 64
#define CS_MODEL_REVIEW_MIN 18

static const double cs_model_w[CEL_SCORE_NFEATURES] = {
    2.078104, /* bias */
    0.000000, /* g_exact */
    0.000000, /* g_nick */
    4.796681, /* g_trunc */
    2.216582, /* g_typo */
    -4.494592, /* g_phon */
    -2.590402, /* g_initial */
    -7.544862, /* g_similar */
    -10.908654, /* g_conflict */
    3.389525, /* g_jw */
    2.595783, /* s_exact */
    0.802909, /* s_partial */
    3.024808, /* s_trunc */
    0.775260, /* s_typo */
    0.152322, /* s_phon */
    0.079877, /* s_initial */
    -1.465693, /* s_similar */
    -4.764211, /* s_conflict */
    1.446968, /* s_jw */
    0.412960, /* s_rarity */
    0.000000, /* g_rarity */
    4.001890, /* m_agree */
    0.000000, /* m_conflict */
    -9.917881, /* suffix_conflict */
    0.000000, /* swapped */
    0.000000, /* surname_only */
    -1.201053, /* given_only */
    -2.756978, /* sex_conflict */
    4.845358, /* g_weak_m_agree */
};

#endif
