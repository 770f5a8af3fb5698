/* model.h — the scorer's logistic-regression weights and default thresholds.
 * Written by src/score/fit_model.py (train split of bench/data/pairs.tsv,
 * sha1 63198325...); do not edit by hand. Feature order: cel_score_feature_name(). */
#ifndef CELERIAC_SCORE_MODEL_H
#define CELERIAC_SCORE_MODEL_H

#define CS_MODEL_VERSION "lr-2026-11-28-63198325"
#define CS_MODEL_RPC_MIN 68
#define CS_MODEL_REVIEW_MIN 17

static const double cs_model_w[CEL_SCORE_NFEATURES] = {
    1.995399, /* bias */
    0.000000, /* g_exact */
    0.000000, /* g_nick */
    4.718549, /* g_trunc */
    2.544568, /* g_typo */
    -4.496434, /* g_phon */
    -2.534374, /* g_initial */
    -7.845118, /* g_similar */
    -11.225150, /* g_conflict */
    3.991105, /* g_jw */
    2.592930, /* s_exact */
    0.619722, /* s_partial */
    3.010066, /* s_trunc */
    0.776395, /* s_typo */
    0.077720, /* s_phon */
    0.094492, /* s_initial */
    -1.199383, /* s_similar */
    -4.539062, /* s_conflict */
    1.194999, /* s_jw */
    0.430358, /* s_rarity */
    0.000000, /* g_rarity */
    4.670245, /* m_agree */
    0.000000, /* m_conflict */
    -9.866502, /* suffix_conflict */
    0.000000, /* swapped */
    0.000000, /* surname_only */
    -1.432878, /* given_only */
    -2.803068, /* sex_conflict */
};

#endif
