/* Linear layers on weights in their stored precision (F32, BF16, F16, FP8 e4m3 with 128x128
 * E8M0 block scales, FP4 e2m1 with 1x32 scales, the Q8/Q4 formats of `dsv4 quantize`). This is
 * the hot spot of inference. Small batches (decode) stream the rows through the vector kernels
 * of matvec_avx2.c, widening weights in registers (or, without AVX2, decode a row into a buffer
 * and take dot products); large batches (prefill) decode a block of rows and hand it to
 * OpenBLAS sgemm, so the decode cost is paid once per block and amortised over all tokens. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

uint64_t mat_bytes(const Mat *m) {
    uint64_t n = (uint64_t)m->rows * (uint64_t)m->cols, s = 0;
    switch (m->kind) {
    case W_F32: return n * 4;
    case W_BF16: case W_F16: return n * 2;
    case W_FP8: s = (uint64_t)((m->rows + 127) / 128) * (uint64_t)m->scale_cols; return n + s * (m->scale_f32 ? 4 : 1);
    case W_FP4: s = (uint64_t)m->rows * (uint64_t)m->scale_cols; return n / 2 + s * (m->scale_f32 ? 4 : 1);
    case W_Q8: return n + (uint64_t)m->rows * (uint64_t)m->scale_cols * 2;
    case W_Q4: return n / 2 + (uint64_t)m->rows * (uint64_t)m->scale_cols * 2;
    }
    return 0;
}

static int linear_simd_enabled(void);
static void dequant_row(const Mat *W, int64_t r, float *dst) {
    const int64_t cols = W->cols;
    if (linear_simd_enabled() && matvec_avx2_dequant_row(W, r, dst)) return;
    switch (W->kind) {
    case W_F32:
        memcpy(dst, (const uint8_t *)W->w + 4 * r * cols, sizeof(float) * (size_t)cols);
        break;
    /* 16-bit data may sit at odd offsets in a safetensors file: loads go through memcpy */
    case W_BF16: {
        const uint8_t *p = (const uint8_t *)W->w + 2 * r * cols;
        for (int64_t c = 0; c < cols; c++) { uint16_t h; memcpy(&h, p + 2 * c, 2); dst[c] = bf16_to_f32(h); }
        break;
    }
    case W_F16: {
        const uint8_t *p = (const uint8_t *)W->w + 2 * r * cols;
        for (int64_t c = 0; c < cols; c++) { uint16_t h; memcpy(&h, p + 2 * c, 2); dst[c] = f16_to_f32(h); }
        break;
    }
    case W_FP8: {
        const uint8_t *p = (const uint8_t *)W->w + r * cols;
        const int64_t srow = (r / 128) * W->scale_cols;
        for (int64_t c0 = 0; c0 < cols; c0 += 128) {
            const float s = mat_scale(W, srow + c0 / 128);
            const int64_t c1 = c0 + 128 < cols ? c0 + 128 : cols;
            for (int64_t c = c0; c < c1; c++) dst[c] = dsv4_e4m3_table[p[c]] * s;
        }
        break;
    }
    case W_FP4: {
        const uint8_t *p = (const uint8_t *)W->w + r * (cols / 2);
        const int64_t srow = r * W->scale_cols;
        for (int64_t c0 = 0; c0 < cols; c0 += 32) {
            const float s = mat_scale(W, srow + c0 / 32);
            for (int64_t c = c0; c < c0 + 32; c += 2) {
                const uint8_t b = p[c / 2];
                dst[c] = dsv4_e2m1_table[b & 0xf] * s;       /* low nibble first */
                dst[c + 1] = dsv4_e2m1_table[b >> 4] * s;
            }
        }
        break;
    }
    case W_Q8: {
        const int8_t *p = (const int8_t *)W->w + r * cols;
        for (int64_t c = 0; c < cols; c++) dst[c] = (float)p[c] * mat_scale(W, r * W->scale_cols + c / 32);
        break;
    }
    case W_Q4: {
        const uint8_t *p = (const uint8_t *)W->w + r * (cols / 2);
        for (int64_t c = 0; c < cols; c += 2) {
            const float s = mat_scale(W, r * W->scale_cols + c / 32);
            dst[c] = (float)((p[c / 2] & 0xf) - 8) * s;   /* low nibble first */
            dst[c + 1] = (float)((p[c / 2] >> 4) - 8) * s;
        }
        break;
    }
    }
}

void mat_dequant_rows(const Mat *W, int64_t r0, int64_t nr, float *dst) {
    for (int64_t i = 0; i < nr; i++) dequant_row(W, r0 + i, dst + i * W->cols);
}

/* The dot product and axpy of the per-query attention and of training: AVX2 versions in
 * matvec_avx2.c where the CPU has them, these loops otherwise. */
float dot_f32(const float *a, const float *b, int64_t n) {
    if (cpu_has_avx2()) return dot_f32_avx2(a, b, n);
    int64_t i = 0;
    float acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
    for (; i + 4 <= n; i += 4) {
        acc0 += a[i] * b[i]; acc1 += a[i + 1] * b[i + 1];
        acc2 += a[i + 2] * b[i + 2]; acc3 += a[i + 3] * b[i + 3];
    }
    float acc = (acc0 + acc1) + (acc2 + acc3);
    for (; i < n; i++) acc += a[i] * b[i];
    return acc;
}

void axpy_f32(float *y, float a, const float *x, int64_t n) {
    if (cpu_has_avx2()) { axpy_f32_avx2(y, a, x, n); return; }
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* Batched paths decode about 4 MB of weight rows at a time into f32 for sgemm (within L2/L3 reach). */
static int64_t block_rows(int64_t cols, int64_t nr) {
    int64_t rb = (int64_t)(1 << 20) / (cols > 0 ? cols : 1);
    if (rb < 16) rb = 16;
    return rb > nr ? nr : rb;
}
static void dequant_block(const Mat *W, int64_t r0, int64_t nb, float *buf) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nb; i++) dequant_row(W, r0 + i, buf + i * W->cols);
}

/* Below this many weight bytes the small-batch kernels run on one thread. */
#define LINEAR_PARALLEL_BYTES 65536

/* The vector kernels run where the CPU has them (matvec_avx2.c asks it; DSV4_SIMD=0 in the
 * environment says no, DSV4_SIMD=avx2 no AVX-512), unless linear_use_simd asks for fewer:
 * 0 the portable path, 1 the AVX2 kernels only, 2 all (tests compare them). */
static int simd_enabled = 1;
void linear_use_simd(int level) {
    simd_enabled = level > 0;
    matvec_allow_avx512(level > 1);
}
static int linear_simd_enabled(void) { return simd_enabled; }

static int64_t job_rows(const LinearJob *j) { return j->nr ? j->nr : j->W->rows - j->r0; }

/* The vector kernels over the rows of one or more jobs (T <= LINEAR_SMALL_T): the activations
 * are permuted once per job into the order the kernel widens weights in; the rows of all jobs,
 * laid end to end by their bytes, are split into one contiguous run per thread (each thread
 * streams through its own part of the matrices). Work under LINEAR_PARALLEL_BYTES stays on the
 * calling thread: it is done before a second thread would have started. */
typedef struct { const LinearJob *jobs; int n; int64_t T; float **xp; uint64_t total; } MatvecWork;

static void matvec_share(void *arg, int id, int nt) {
    const MatvecWork *w = arg;
    const uint64_t lo = w->total * (uint64_t)id / (uint64_t)nt, hi = w->total * (uint64_t)(id + 1) / (uint64_t)nt;
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const LinearJob *j = &w->jobs[i];
        const uint64_t rows = (uint64_t)job_rows(j), b = mat_bytes(j->W) / (uint64_t)j->W->rows * rows, start = off;
        off += b;
        if (hi <= start || lo >= start + b) continue;   /* this thread's bytes miss the job */
        const uint64_t s0 = lo > start ? lo - start : 0, s1 = hi < start + b ? hi - start : b;
        /* row r belongs to the thread whose byte range holds the row's first byte */
        const int64_t a = (int64_t)((s0 * rows + b - 1) / b), e = (int64_t)((s1 * rows + b - 1) / b);
        if (e > a) matvec_avx2_rows(j->W, j->r0 + a, e - a, w->xp[i], w->T, j->y + a, j->ldy);
    }
}

/* whether jobs a and b read the same activations prepared the same way (the preparation, and the
 * choice of AVX-512 kernel behind it, depend on the format and width alone) */
static int same_prepared_input(const LinearJob *a, const LinearJob *b) {
    return a->x == b->x && a->ldx == b->ldx && a->W->kind == b->W->kind && a->W->cols == b->W->cols;
}

#define MATVEC_STACK_JOBS 32   /* a decode step's batches are smaller: no allocation for the lists */
static void matvec_jobs(const LinearJob *jobs, int n, int64_t T) {
    float *xp_stack[MATVEC_STACK_JOBS];
    int owner_stack[MATVEC_STACK_JOBS];   /* the job whose prepared copy job i uses */
    float **xp = n <= MATVEC_STACK_JOBS ? xp_stack : xmalloc(sizeof(float *) * (size_t)n);
    int *owner = n <= MATVEC_STACK_JOBS ? owner_stack : xmalloc(sizeof(int) * (size_t)n);
    int64_t floats = 0;
    for (int i = 0; i < n; i++) {
        owner[i] = i;
        for (int j = 0; j < i && owner[i] == i; j++)   /* jobs reading one input (a step's projections of h) */
            if (owner[j] == j && same_prepared_input(&jobs[i], &jobs[j])) owner[i] = j;
        if (owner[i] == i) floats += T * jobs[i].W->cols;
    }
    float *prepared = xmalloc(sizeof(float) * (size_t)floats);   /* every prepared input, one after another */
    MatvecWork w = {jobs, n, T, xp, 0};
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        if (owner[i] == i) {
            xp[i] = prepared + at;
            at += T * jobs[i].W->cols;
            matvec_avx2_prepare(jobs[i].W, jobs[i].x, jobs[i].ldx, T, xp[i]);
        } else {
            xp[i] = xp[owner[i]];
        }
        w.total += mat_bytes(jobs[i].W) / (uint64_t)jobs[i].W->rows * (uint64_t)job_rows(&jobs[i]);
    }
    team_run(matvec_share, &w, w.total >= (uint64_t)LINEAR_PARALLEL_BYTES ? team_threads() : 1);
    free(prepared);
    if (xp != xp_stack) free(xp);
    if (owner != owner_stack) free(owner);
}

/* Rows r0 .. r0+nr of W against T tokens, split evenly over the threads of a team_run: the
 * portable kernel (x as given) or the int8 one (xq, xs prepared). */
typedef struct {
    const Mat *W; float *y; int64_t ldy; const float *x; int64_t ldx, T, r0, nr; const int8_t *xq; const float *xs;
} RowsWork;

static void portable_rows_share(void *arg, int id, int nt) {
    const RowsWork *w = arg;
    const int64_t cols = w->W->cols, a = w->nr * id / nt, b = w->nr * (id + 1) / nt;
    float *row = xmalloc(sizeof(float) * (size_t)cols);
    for (int64_t i = a; i < b; i++) {
        const float *wr = row;
        if (w->W->kind == W_F32 && (uintptr_t)w->W->w % sizeof(float) == 0) wr = (const float *)w->W->w + (w->r0 + i) * cols;
        else dequant_row(w->W, w->r0 + i, row);
        for (int64_t t = 0; t < w->T; t++) w->y[t * w->ldy + i] = dot_f32(wr, w->x + t * w->ldx, cols);
    }
    free(row);
}

static void i8_rows_share(void *arg, int id, int nt) {
    const RowsWork *w = arg;
    const int64_t a = w->nr * id / nt, b = w->nr * (id + 1) / nt;
    if (b > a) matvec_avx2_i8_rows(w->W, w->r0 + a, b - a, w->xq, w->xs, w->T, w->y + a, w->ldy);
}

void linear(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t T, const Mat *W, int64_t r0, int64_t nr) {
    const int64_t cols = W->cols;
    if (T <= 0 || nr <= 0) return;
    /* F32, aligned, more tokens than the small-batch kernels take: straight to BLAS */
    if (W->kind == W_F32 && T > LINEAR_SMALL_T && (uintptr_t)W->w % sizeof(float) == 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)T, (blasint)nr, (blasint)cols, 1.0f, x, (blasint)ldx,
                    (const float *)W->w + r0 * cols, (blasint)cols, 0.0f, y, (blasint)ldy);
        return;
    }
    /* Up to LINEAR_SMALL_T tokens every format takes the kernels below, whose per-token results
     * do not depend on T (speculative decoding relies on it). */
    if (T <= LINEAR_SMALL_T && linear_simd_enabled() && matvec_avx2_usable(W)) {
        const LinearJob job = {W, y, ldy, x, ldx, r0, nr};
        matvec_jobs(&job, 1, T);
        return;
    }
    if (T <= LINEAR_SMALL_T) {   /* portable path: decode a row, then dot it with each token */
        RowsWork w = {W, y, ldy, x, ldx, T, r0, nr, NULL, NULL};
        team_run(portable_rows_share, &w, team_threads());
        return;
    }
    const int64_t rb = block_rows(cols, nr);
    float *buf = xmalloc(sizeof(float) * (size_t)(rb * cols));
    for (int64_t b0 = 0; b0 < nr; b0 += rb) {
        const int64_t nb = b0 + rb <= nr ? rb : nr - b0;
        dequant_block(W, r0 + b0, nb, buf);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)T, (blasint)nb, (blasint)cols, 1.0f, x,
                    (blasint)ldx, buf, (blasint)cols, 0.0f, y + b0, (blasint)ldy);
    }
    free(buf);
}

/* Several products as one piece of parallel work (decode): what linear() does for one matrix,
 * over all the jobs at once (a step that needs a few small matrices — w1 and w3 of an expert, a
 * compressor's two projections — hands them to the threads once and splits the work evenly; jobs
 * reading the same input prepare it once). Every output is bit-identical to linear() job by
 * job; other cases are linear() job by job. */
void linear_batch(const LinearJob *jobs, int n, int64_t T) {
    int vector = T >= 1 && T <= LINEAR_SMALL_T && linear_simd_enabled();
    for (int i = 0; i < n; i++) vector &= matvec_avx2_usable(jobs[i].W);
    if (vector) { matvec_jobs(jobs, n, T); return; }
    for (int i = 0; i < n; i++)
        linear(jobs[i].y, jobs[i].ldy, jobs[i].x, jobs[i].ldx, T, jobs[i].W, jobs[i].r0, job_rows(&jobs[i]));
}

void linear_fast(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t T, const Mat *W, int64_t r0, int64_t nr) {
    if (T < 1 || T > LINEAR_SMALL_T || !linear_simd_enabled() || !matvec_avx2_i8_usable(W)) {
        linear(y, ldy, x, ldx, T, W, r0, nr);
        return;
    }
    const int64_t cols = W->cols;
    int8_t *xq = xmalloc((size_t)(T * cols));
    float *xs = xmalloc(sizeof(float) * (size_t)(T * cols / 8));
    matvec_avx2_i8_prepare(W, x, ldx, T, xq, xs);
    RowsWork w = {W, y, ldy, x, ldx, T, r0, nr, xq, xs};
    team_run(i8_rows_share, &w, mat_bytes(W) / (uint64_t)W->rows * (uint64_t)nr >= (uint64_t)LINEAR_PARALLEL_BYTES ? team_threads() : 1);
    free(xq);
    free(xs);
}

/* Backward of linear (y = x Wᵀ over rows r0..r0+nr of W): dx [T, cols] (row stride ldx) += dy W;
 * dW (may be NULL; f32 [W->rows, cols]) rows r0.. += dyᵀ x. The weight is decoded a block of rows
 * at a time, so quantised weights get the gradient of their dequantised values. */
void linear_backward(float *dx, int64_t ldx, float *dW, const float *dy, int64_t ldy, const float *x, int64_t T,
                     const Mat *W, int64_t r0, int64_t nr) {
    const int64_t cols = W->cols;
    if (T <= 0 || nr <= 0) return;
    if (dx) {
        const int64_t rb = block_rows(cols, nr);
        float *buf = xmalloc(sizeof(float) * (size_t)(rb * cols));
        for (int64_t b0 = 0; b0 < nr; b0 += rb) {
            const int64_t nb = b0 + rb <= nr ? rb : nr - b0;
            dequant_block(W, r0 + b0, nb, buf);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)T, (blasint)cols, (blasint)nb, 1.0f, dy + b0,
                        (blasint)ldy, buf, (blasint)cols, 1.0f, dx, (blasint)ldx);
        }
        free(buf);
    }
    if (dW)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)nr, (blasint)cols, (blasint)T, 1.0f, dy, (blasint)ldy, x,
                    (blasint)ldx, 1.0f, dW + r0 * cols, (blasint)cols);
}
