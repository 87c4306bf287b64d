/* The public API through libdsv4.so and include/dsv4.h only: open, prefill, decode, MTP,
 * reset, errors. Compares with the reference fixture logits. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsv4.h"

static int pass, fail;
#define CHECK(c, ...) do { if (c) pass++; else { fail++; printf("FAIL api: "); printf(__VA_ARGS__); printf("\n"); } } while (0)

static float *load_f32(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = ftell(f) / 4;
    rewind(f);
    float *v = malloc((size_t)*n * 4);
    if (fread(v, 4, (size_t)*n, f) != (size_t)*n) { fclose(f); free(v); return NULL; }
    fclose(f);
    return v;
}

static double maxdiff(const float *a, const float *b, int n) {
    double d = 0;
    for (int i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

int main(int argc, char **argv) {
    const char *fx = argc > 1 ? argv[1] : "tests/fixtures";
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny-fp8", fx);
    dsv4_open_options o = {.quant_rounding = 0};
    dsv4_model *m = dsv4_model_open(path, &o);
    CHECK(m != NULL, "open %s: %s", path, dsv4_last_error());
    if (!m) { printf("api: %d passed, %d failed\n", pass, fail + 1); return 1; }
    const int V = dsv4_vocab_size(m), nd = dsv4_hc_mult(m) * dsv4_hidden_size(m);
    long nref, nmtp;
    snprintf(path, sizeof path, "%s/tiny-fp8/ref_logits.f32", fx);
    float *ref = load_f32(path, &nref);
    snprintf(path, sizeof path, "%s/tiny-fp8/ref_mtp.f32", fx);
    float *refm = load_f32(path, &nmtp);
    snprintf(path, sizeof path, "%s/tokens.txt", fx);
    FILE *f = fopen(path, "r");
    int32_t ids[300];
    int n = 0;
    while (f && n < 300 && fscanf(f, "%d", &ids[n]) == 1) n++;
    if (f) fclose(f);
    CHECK(ref && refm && n == 300 && nref == 300L * V, "fixtures readable");
    if (!ref || !refm || n != 300) return 1;

    dsv4_session *s = dsv4_session_new(m, 300);
    float *logits = malloc(sizeof(float) * V), *hidden = malloc(sizeof(float) * (size_t)300 * nd);
    float *ml = malloc(sizeof(float) * (size_t)299 * V);
    CHECK(dsv4_forward(s, ids, 200, logits, hidden) == 0, "prefill: %s", dsv4_last_error());
    CHECK(maxdiff(logits, ref + 199L * V, V) <= 1e-4, "prefill row 199 vs reference: %g", maxdiff(logits, ref + 199L * V, V));
    double worst = 0;
    for (int t = 200; t < 300; t++) {
        if (dsv4_forward(s, ids + t, 1, logits, hidden + (long)t * nd)) break;
        worst = fmax(worst, maxdiff(logits, ref + (long)t * V, V));
    }
    CHECK(dsv4_session_pos(s) == 300 && worst <= 1e-4, "decode 200..299 vs reference: %g", worst);
    CHECK(dsv4_mtp_forward(s, hidden, ids + 1, 299, ml) == 0 && maxdiff(ml, refm, 299 * V) <= 1e-4, "MTP vs reference: %g",
          maxdiff(ml, refm, 299 * V));
    CHECK(dsv4_forward(s, ids, 1, logits, NULL) != 0 && strstr(dsv4_last_error(), "context full"), "full cache refused: %s", dsv4_last_error());
    dsv4_session_reset(s);
    dsv4_session_set_chunk(s, 13);
    CHECK(dsv4_forward(s, ids, 300, logits, NULL) == 0 && maxdiff(logits, ref + 299L * V, V) <= 1e-4, "after reset, chunked prefill");
    int32_t bad = V + 5;
    CHECK(dsv4_forward(s, &bad, 1, logits, NULL) != 0 && strstr(dsv4_last_error(), "out of range"), "bad token refused: %s", dsv4_last_error());
    dsv4_session_free(s);
    dsv4_model_close(m);
    CHECK(dsv4_model_open("/nonexistent-model-dir", NULL) == NULL && strstr(dsv4_last_error(), "/nonexistent-model-dir"),
          "missing model: %s", dsv4_last_error());
    free(ref); free(refm); free(logits); free(hidden); free(ml);
    printf("api: %d passed, %d failed\n", pass, fail);
    return fail != 0;
}
