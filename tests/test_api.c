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

static int utf8_ok(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
        if (!l || i + l > n) return 0;
        for (size_t k = 1; k < l; k++) if (((unsigned char)s[i + k] & 0xc0) != 0x80) return 0;
        i += l;
    }
    return 1;
}

static double maxdiff(const float *a, const float *b, int n) {
    double d = 0;
    for (int i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* Speculative decoding's primitives: a two-token verification pass gives, for each token, the
 * logits of plain one-token decoding bit for bit, and taking its last token back (a rejected
 * draft) leaves the session exactly as if that token had never been fed. Rejections land on
 * every phase of the compressors (ratios 4, 16, 128 and the indexer's) and of Engram's conv. */
static void check_verify_undo(const char *dir, const int32_t *all_ids) {
    dsv4_open_options o = {.quant_rounding = -1};
    dsv4_model *m = dsv4_model_open(dir, &o);
    CHECK(m != NULL, "open %s: %s", dir, dsv4_last_error());
    if (!m) return;
    const int V = dsv4_vocab_size(m), P = 100, K = 60;
    int32_t ids[P + K + 2];
    for (int i = 0; i < P + K + 2; i++) ids[i] = all_ids[i] % V;
    dsv4_session *a = dsv4_session_new(m, 300), *b = dsv4_session_new(m, 300);
    float *ref = malloc(sizeof(float) * (size_t)(K + 1) * V), *two = malloc(sizeof(float) * 2 * (size_t)V);
    int ok = dsv4_forward(a, ids, P, ref, NULL) == 0 && dsv4_forward(b, ids, P, two, NULL) == 0;
    for (int k = 0; ok && k <= K; k++) ok = dsv4_forward(a, ids + P + k, 1, ref + (size_t)k * V, NULL) == 0;
    int same = ok, rejected = 0, t = 0;
    while (ok && t < K) {
        ok = dsv4_forward_verify(b, ids + P + t, 2, two, NULL) == 0;
        same &= ok && !memcmp(two, ref + (size_t)t * V, sizeof(float) * V) && !memcmp(two + V, ref + (size_t)(t + 1) * V, sizeof(float) * V);
        if ((P + t) % 3 == 0 || (P + t) % 16 == 15) {   /* reject the second token */
            ok = ok && dsv4_session_undo_last(b) == 0;
            rejected++;
            t += 1;
        } else {
            t += 2;
        }
        same &= dsv4_session_pos(b) == P + t;
    }
    CHECK(ok && same && rejected > 10, "%s: 2-token verification equals 1-token decoding bit for bit, across %d undone tokens: %s", dir,
          rejected, ok ? "" : dsv4_last_error());
    CHECK(dsv4_session_undo_last(b) != 0 && strstr(dsv4_last_error(), "only the last token"), "a second undo is refused: %s",
          dsv4_last_error());
    CHECK(dsv4_forward_verify(b, ids, 0, two, NULL) != 0, "an empty verification is refused");
    dsv4_session_free(a);
    dsv4_session_free(b);
    dsv4_model_close(m);
    free(ref);
    free(two);
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
    snprintf(path, sizeof path, "%s/tiny-fp8", fx);
    check_verify_undo(path, ids);
    snprintf(path, sizeof path, "%s/engram-tiny", fx);
    check_verify_undo(path, ids);
    CHECK(dsv4_model_open("/nonexistent-model-dir", NULL) == NULL && strstr(dsv4_last_error(), "/nonexistent-model-dir"),
          "missing model: %s", dsv4_last_error());
    free(ref); free(refm); free(logits); free(hidden); free(ml);

    /* streaming decode: every chunk is whole, valid UTF-8; together they are the text */
    dsv4_tokenizer *tk = argc > 2 ? dsv4_tokenizer_load(argv[2]) : NULL;
    CHECK(argc <= 2 || tk, "tokenizer %s: %s", argc > 2 ? argv[2] : "", dsv4_last_error());
    if (tk) {
        const char *text = "h\xc3\xa9llo \xf0\x9f\x98\x80\xf0\x9f\xab\xa8 \xe4\xb8\x96\xe7\x95\x8c <\xef\xbd\x9cUser\xef\xbd\x9c>!";
        int32_t *tids = NULL;
        int64_t tn = dsv4_tokenize(tk, text, strlen(text), &tids);
        char all[512] = {0}, chunk[256];
        size_t at = 0;
        int valid = 1, split_seen = 0;
        dsv4_utf8_stream st = {0};
        for (int64_t i = 0; i <= tn; i++) {
            size_t k = dsv4_stream_decode(tk, &st, i < tn ? tids[i] : -1, chunk, sizeof chunk);
            valid &= utf8_ok(chunk, k);
            if (i < tn && k == 0) split_seen = 1;   /* a token ending inside a character */
            memcpy(all + at, chunk, k);
            at += k;
        }
        CHECK(tn > 0 && valid && at == strlen(text) && !memcmp(all, text, at) && split_seen,
              "stream decode of %lld ids: valid %d, %zu bytes, a held-back character seen %d", (long long)tn, valid, at, split_seen);
        /* byte tokens that cannot form a character: replaced, never emitted broken */
        int32_t b0 = -1, b1 = -1;
        for (int32_t id = 0; id < dsv4_tokenizer_vocab_size(tk) && (b0 < 0 || b1 < 0); id++) {
            size_t l;
            const char *b = dsv4_token_bytes(tk, id, &l);
            if (b && l == 1 && (unsigned char)b[0] == 0xf0) b0 = id;
            if (b && l == 1 && b[0] == 'A') b1 = id;
        }
        dsv4_utf8_stream s2 = {0};
        size_t k1 = dsv4_stream_decode(tk, &s2, b0, chunk, sizeof chunk);
        size_t k2 = dsv4_stream_decode(tk, &s2, b1, chunk + k1, sizeof chunk - k1);
        size_t k3 = dsv4_stream_decode(tk, &s2, b0, chunk + k1 + k2, sizeof chunk - k1 - k2);
        size_t k4 = dsv4_stream_decode(tk, &s2, -1, chunk + k1 + k2 + k3, sizeof chunk - k1 - k2 - k3);
        CHECK(b0 >= 0 && b1 >= 0 && k1 == 0 && k2 == 4 && !memcmp(chunk, "\xef\xbf\xbd" "A", 4) && k3 == 0 && k4 == 0,
              "a lone lead byte becomes U+FFFD, an unfinished one at the end is dropped");
        free(tids);
        dsv4_tokenizer_free(tk);
    }
    printf("api: %d passed, %d failed\n", pass, fail);
    return fail != 0;
}
