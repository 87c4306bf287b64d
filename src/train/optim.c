/* Optimisation: AdamW with decoupled weight decay, global-norm gradient clipping, and the
 * learning-rate schedule (linear warm-up, then cosine decay to a floor). */
#include <math.h>

#include "../dsv4_internal.h"

/* One AdamW step on n parameters (Loshchilov & Hutter): m = b1 m + (1-b1) g, v = b2 v + (1-b2) g²,
 * p -= lr (m̂ / (sqrt(v̂) + eps) + wd p), with m̂, v̂ bias-corrected for step t (1-based). */
void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1, double b2, double eps,
                double wd, int64_t t) {
    const double c1 = 1.0 - pow(b1, (double)t), c2 = 1.0 - pow(b2, (double)t);
    for (int64_t i = 0; i < n; i++) {
        m[i] = (float)(b1 * m[i] + (1 - b1) * g[i]);
        v[i] = (float)(b2 * v[i] + (1 - b2) * (double)g[i] * g[i]);
        const double mh = m[i] / c1, vh = v[i] / c2;
        p[i] = (float)(p[i] - lr * (mh / (sqrt(vh) + eps) + wd * p[i]));
    }
}

/* Learning rate at step s (0-based) of `total`: linear warm-up over `warmup` steps, then cosine
 * from lr to lr * min_ratio. */
double lr_schedule(int64_t s, int64_t total, int64_t warmup, double lr, double min_ratio) {
    if (warmup > 0 && s < warmup) return lr * (double)(s + 1) / (double)warmup;
    const double span = (double)(total - warmup);
    const double x = span > 0 ? (double)(s - warmup) / span : 1.0;
    const double c = 0.5 * (1 + cos(M_PI * (x < 0 ? 0 : x > 1 ? 1 : x)));
    return lr * (min_ratio + (1 - min_ratio) * c);
}
