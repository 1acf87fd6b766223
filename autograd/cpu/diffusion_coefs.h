/* The per-sample arithmetic of the diffusion loss, shared by the CPU and the
 * CUDA kernels (one definition, so both round alike): each sample's target is
 * cx x0 + cn noise and its loss weight w (min-SNR-gamma). */
#ifndef DC_DIFFUSION_COEFS_H
#define DC_DIFFUSION_COEFS_H

#include "../diffusion.h"
#include "../hostdev.h"

#include <math.h>
#include <stdint.h>

/* One sample of the loss: its target is cx x0 + cn noise, its weight w. */
typedef struct {
    float cx, cn;
    double w;
} loss_coefs;

/* min-SNR-gamma weights of dc_diffusion_loss; snr is finite (acp < 1). */
DC_HOSTDEV static inline double loss_weight(double snr, dc_prediction_type p, double gamma) {
    if (gamma <= 0)
        return p == DC_PRED_SAMPLE ? snr : 1.0;
    double m = snr < gamma ? snr : gamma;
    switch (p) {
    case DC_PRED_EPSILON:
        return snr < gamma ? 1.0 : gamma / snr; /* min(snr, gamma) / snr without 0 / 0 */
    case DC_PRED_V_PREDICTION:
        return m / (snr + 1.0);
    default:
        return m;
    }
}

DC_HOSTDEV static inline loss_coefs coefs_of(float acp, dc_prediction_type p, float snr_gamma) {
    float a = sqrtf(acp), s = sqrtf(1.0f - acp);
    loss_coefs c = {0.0f, 1.0f, loss_weight((double)acp / (1.0 - acp), p, snr_gamma)};
    if (p == DC_PRED_V_PREDICTION) { /* -s x0 + a noise rounds as get_velocity's a noise - s x0 */
        c.cx = -s;
        c.cn = a;
    } else if (p == DC_PRED_SAMPLE) {
        c.cx = 1.0f;
        c.cn = 0.0f;
    }
    return c;
}

/* Products rounded to f32 before the sum, as PyTorch's separate ops do. */
DC_HOSTDEV static inline float mix(float cx, float x0, float cn, float noise) {
    float u = cx * x0, v = cn * noise;
    return u + v;
}

/* Element k of the loss's backward, c its sample's coefficients, g the
 * incoming gradient and nd the element count: d loss / d pred added to
 * dpred, and the target's share (its opposite) through cx and cn to dx0 and
 * dnoise (each NULL when not needed). */
DC_HOSTDEV static inline void loss_grad_element(loss_coefs c, double g, double nd,
                                                const float *pred, const float *x0,
                                                const float *noise, int64_t k, float *dpred,
                                                float *dx0, float *dnoise) {
    double e = (double)pred[k] - mix(c.cx, x0[k], c.cn, noise[k]);
    float de = (float)(2.0 * g * c.w * e / nd);
    if (dpred)
        dpred[k] += de;
    if (dx0)
        dx0[k] -= c.cx * de;
    if (dnoise)
        dnoise[k] -= c.cn * de;
}

#endif
