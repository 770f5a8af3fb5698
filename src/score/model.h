/* model.h — the scorer's logistic-regression weights and default thresholds.
 * Hand-set starting values; src/score/fit_model.py rewrites this file with
 * weights fitted on the training split. Feature order: cel_score_feature_name(). */
#ifndef CELERIAC_SCORE_MODEL_H
#define CELERIAC_SCORE_MODEL_H

#define CS_MODEL_VERSION "hand-2026-11-28"
#define CS_MODEL_RPC_MIN 80
#define CS_MODEL_REVIEW_MIN 50

static const double cs_model_w[CEL_SCORE_NFEATURES] = {
    -4.0, /* bias */
    4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 0.5, -4.0, /* given: exact nick trunc typo phon initial similar conflict */
    0.0,                                     /* given_jw */
    5.0, 3.5, 3.5, 3.0, 2.5, 0.5, 0.5, -5.0, /* surname: exact partial trunc typo phon initial similar conflict */
    0.0,                                     /* surname_jw */
    0.8,                                     /* surname_rarity */
    0.3,                                     /* given_rarity */
    1.0, -2.5,                               /* middle agree, middle conflict */
    -4.0,                                    /* suffix conflict */
    -0.5,                                    /* swapped */
    -1.0, -2.0,                              /* surname only, given only */
    -4.0,                                    /* sex conflict */
};

#endif
