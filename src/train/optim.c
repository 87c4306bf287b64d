/* Optimisation: AdamW with decoupled weight decay, global-norm gradient clipping, and the
 * learning-rate schedule (linear warm-up, then cosine decay to a floor). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

/* One AdamW step on n parameters (Loshchilov & Hutter): m = b1 m + (1-b1) g, v = b2 v + (1-b2) g²,
 * p -= lr (m̂ / (sqrt(v̂) + eps) + wd p), with m̂, v̂ bias-corrected for step t (1-based). */
void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1, double b2, double eps,
                double wd, int64_t t) {
    const float B1 = (float)b1, B2 = (float)b2, ic1 = (float)(1.0 / (1.0 - pow(b1, (double)t)));
    const float ic2 = (float)(1.0 / (1.0 - pow(b2, (double)t))), LR = (float)lr, E = (float)eps, WD = (float)wd;
    /* element-wise and independent: the same result whatever the threads */
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        m[i] = B1 * m[i] + (1 - B1) * g[i];
        v[i] = B2 * v[i] + (1 - B2) * g[i] * g[i];
        p[i] -= LR * (m[i] * ic1 / (sqrtf(v[i] * ic2) + E) + WD * p[i]);
    }
}

/* Learning rate at step s (0-based) of `total`: linear warm-up over `warmup` steps, then a step
 * schedule (below) or a cosine from lr to lr * min_ratio. */
double lr_schedule_step(int64_t s, int64_t total, int64_t warmup, double lr) {
    if (warmup > 0 && s < warmup) return lr * (double)(s + 1) / (double)warmup;
    /* multi-step decay: x 0.316 after 80% of the run, x 0.1 after 90% */
    if (s >= total * 9 / 10) return lr * 0.1;
    if (s >= total * 8 / 10) return lr * 0.316;
    return lr;
}

double lr_schedule(int64_t s, int64_t total, int64_t warmup, double lr, double min_ratio) {
    if (warmup > 0 && s < warmup) return lr * (double)(s + 1) / (double)warmup;
    const double span = (double)(total - warmup);
    const double x = span > 0 ? (double)(s - warmup) / span : 1.0;
    const double c = 0.5 * (1 + cos(M_PI * (x < 0 ? 0 : x > 1 ? 1 : x)));
    return lr * (min_ratio + (1 - min_ratio) * c);
}

/* Newton–Schulz orthogonalisation (Muon): X <- a X + (b A + c A²) X with A = X Xᵀ, on the
 * normalised update, iterated; the hybrid schedule runs `fast` quintic steps with coefficients
 * (3.4445, -4.7750, 2.0315) that push the singular values up quickly, then `settle` cubic steps
 * (2, -1.5, 0.5) that converge them to 1. Works on the wide orientation (rows <= cols). */
void newton_schulz(float *G, int64_t rows, int64_t cols, int fast, int settle) {
    const int tr = rows > cols;
    const int64_t r = tr ? cols : rows, c = tr ? rows : cols;
    float *X = xmalloc(sizeof(float) * (size_t)(r * c)), *A = xmalloc(sizeof(float) * (size_t)(r * r));
    float *B = xmalloc(sizeof(float) * (size_t)(r * r)), *Y = xmalloc(sizeof(float) * (size_t)(r * c));
    double nrm = 0;
    for (int64_t i = 0; i < rows * cols; i++) nrm += (double)G[i] * G[i];
    const float inv = (float)(1.0 / (sqrt(nrm) + 1e-7));
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            const float v = G[i * cols + j] * inv;
            if (tr) X[j * c + i] = v; else X[i * c + j] = v;
        }
    for (int it = 0; it < fast + settle; it++) {
        const float a = it < fast ? 3.4445f : 2.0f, b = it < fast ? -4.7750f : -1.5f, cc = it < fast ? 2.0315f : 0.5f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)r, (blasint)r, (blasint)c, 1.0f, X, (blasint)c, X, (blasint)c, 0.0f, A, (blasint)r);
        /* B = b A + c A A */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)r, (blasint)r, (blasint)r, cc, A, (blasint)r, A, (blasint)r, 0.0f, B, (blasint)r);
        for (int64_t i = 0; i < r * r; i++) B[i] += b * A[i];
        /* X = a X + B X */
        memcpy(Y, X, sizeof(float) * (size_t)(r * c));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)r, (blasint)c, (blasint)r, 1.0f, B, (blasint)r, Y, (blasint)c, a, X, (blasint)c);
    }
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) G[i * cols + j] = tr ? X[j * c + i] : X[i * c + j];
    free(X); free(A); free(B); free(Y);
}

/* One Muon step on a [rows, cols] matrix: Nesterov momentum, Newton–Schulz, the update scaled so
 * its RMS matches an AdamW update's (an orthogonal matrix has RMS 1/sqrt(max(rows, cols)); the V4
 * report's match-RMS coefficient is 0.18, Moonlight's 0.2), decoupled weight decay. */
void muon_step(float *p, const float *g, float *mom, int64_t rows, int64_t cols, double lr, double mu, double wd, float *scratch) {
    const int64_t n = rows * cols;
    for (int64_t i = 0; i < n; i++) {
        mom[i] = (float)(mu * mom[i] + g[i]);
        scratch[i] = (float)(g[i] + mu * mom[i]);
    }
    newton_schulz(scratch, rows, cols, 8, 2);
    const double k = 0.18 * sqrt((double)(rows > cols ? rows : cols));
    for (int64_t i = 0; i < n; i++) p[i] = (float)(p[i] - lr * (k * scratch[i] + wd * p[i]));
}

/* ---- sparse row gradients (the Engram tables) ---- */

void sparse_rows_add(SparseRows *s, int64_t row, const float *v, float scale) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->row = realloc(s->row, sizeof(int64_t) * (size_t)s->cap);
        s->val = realloc(s->val, sizeof(float) * (size_t)(s->cap * s->width));
        if (!s->row || !s->val) { fprintf(stderr, "dsv4: out of memory (sparse gradient rows)\n"); abort(); }
    }
    s->row[s->n] = row;
    float *dst = s->val + s->n * s->width;
    for (int64_t i = 0; i < s->width; i++) dst[i] = scale * v[i];
    s->n++;
}

typedef struct { int64_t row, at; } RowAt;
static int row_at_cmp(const void *a, const void *b) {
    const RowAt *x = a, *y = b;
    if (x->row != y->row) return x->row < y->row ? -1 : 1;
    return x->at < y->at ? -1 : x->at > y->at;
}

/* Sorts by row and sums repeats in the order they were added: the same sums, bit for bit,
 * however the rows are stored afterwards (memory or disk). */
void sparse_rows_merge(SparseRows *s) {
    if (s->n < 2) return;
    RowAt *o = malloc(sizeof(RowAt) * (size_t)s->n);
    float *val = malloc(sizeof(float) * (size_t)(s->n * s->width));
    if (!o || !val) { fprintf(stderr, "dsv4: out of memory (sparse gradient rows)\n"); abort(); }
    for (int64_t k = 0; k < s->n; k++) { o[k].row = s->row[k]; o[k].at = k; }
    qsort(o, (size_t)s->n, sizeof(RowAt), row_at_cmp);
    int64_t u = -1;
    for (int64_t k = 0; k < s->n; k++) {
        const float *src = s->val + o[k].at * s->width;
        if (u < 0 || s->row[u] != o[k].row) {
            u++;
            s->row[u] = o[k].row;
            memcpy(val + u * s->width, src, sizeof(float) * (size_t)s->width);
        } else
            for (int64_t i = 0; i < s->width; i++) val[u * s->width + i] += src[i];
    }
    free(s->val);
    s->val = val;
    s->n = u + 1;
    free(o);
}

void sparse_rows_free(SparseRows *s) {
    free(s->row);
    free(s->val);
    memset(s, 0, sizeof *s);
}

/* Lazy Adam (as torch.optim.SparseAdam): the moments and values of a row change only in the
 * steps whose gradient has that row; the bias correction follows the global step t. */
void adam_rows_step(float *p, const SparseRows *g, float *m, float *v, double lr, double b1, double b2, double eps, int64_t t) {
    const int64_t w = g->width;
#pragma omp parallel for schedule(static) if (g->n * w > 65536)
    for (int64_t k = 0; k < g->n; k++) {
        const int64_t o = g->row[k] * w;
        adamw_step(p + o, g->val + k * w, m + o, v + o, w, lr, b1, b2, eps, 0.0, t);
    }
}
