/* Sampling from logits: repetition penalty, temperature, top-k, top-p (nucleus), min-p, and a
 * seeded generator, so the same seed and settings give the same text. Temperature 0 (or
 * top-k 1) is greedy decoding; ties go to the lower id. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

struct dsv4_sampler {
    dsv4_sampling p;
    int64_t vocab;
    uint64_t state;
    int64_t *idx;     /* candidate ids */
    float *prob;
};

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

dsv4_sampling dsv4_sampling_default(void) {
    return (dsv4_sampling){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f, .repeat_penalty = 1.0f,
                           .repeat_last_n = 64, .seed = 0};
}

dsv4_sampler *dsv4_sampler_new(const dsv4_sampling *p, int64_t vocab) {
    if (p->temperature < 0 || !(p->top_p > 0 && p->top_p <= 1) || p->min_p < 0 || p->min_p > 1 || p->top_k < 0 ||
        !(p->repeat_penalty > 0) || p->repeat_last_n < 0 || vocab < 1) {
        dsv4_fail("sampling settings out of range (temperature >= 0, 0 < top_p <= 1, 0 <= min_p <= 1, top_k >= 0, repeat_penalty > 0)");
        return NULL;
    }
    dsv4_sampler *s = xcalloc(1, sizeof *s);
    s->p = *p;
    s->vocab = vocab;
    s->state = p->seed ^ 0x5eed5eed5eed5eedull;
    s->idx = xmalloc(sizeof(int64_t) * (size_t)vocab);
    s->prob = xmalloc(sizeof(float) * (size_t)vocab);
    return s;
}

void dsv4_sampler_free(dsv4_sampler *s) {
    if (!s) return;
    free(s->idx);
    free(s->prob);
    free(s);
}

static int by_logit_desc(const void *a, const void *b, void *logits) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    const float u = ((const float *)logits)[x], v = ((const float *)logits)[y];
    if (u != v) return u > v ? -1 : 1;
    return x < y ? -1 : x > y;   /* ties: lower id first */
}

int32_t dsv4_sample(dsv4_sampler *s, float *logits, const int32_t *history, int64_t n_history) {
    const int64_t V = s->vocab;
    for (int64_t i = 0; i < V; i++) if (isnan(logits[i])) logits[i] = -INFINITY;
    /* repetition penalty (CTRL): a recent token's logit is divided by the penalty if positive,
     * multiplied if negative; each token once */
    if (s->p.repeat_penalty != 1.0f && history) {
        const int64_t from = n_history > s->p.repeat_last_n ? n_history - s->p.repeat_last_n : 0;
        for (int64_t i = from; i < n_history; i++) {
            const int32_t t = history[i];
            if (t < 0 || t >= V) continue;
            int seen = 0;
            for (int64_t j = from; j < i && !seen; j++) seen = history[j] == t;
            if (seen) continue;
            logits[t] = logits[t] > 0 ? logits[t] / s->p.repeat_penalty : logits[t] * s->p.repeat_penalty;
        }
    }
    if (s->p.temperature == 0.0f || s->p.top_k == 1) {
        int64_t best = 0;
        for (int64_t i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
        return (int32_t)best;
    }
    /* candidates: the top-k by logit (all when top_k = 0), in descending order */
    int64_t n = V;
    if (s->p.top_k > 0 && s->p.top_k < V) {
        n = s->p.top_k;
        topk_indices(logits, V, n, s->idx);
    } else {
        for (int64_t i = 0; i < V; i++) s->idx[i] = i;
    }
    qsort_r(s->idx, (size_t)n, sizeof(int64_t), by_logit_desc, logits);
    /* softmax with temperature */
    const float mx = logits[s->idx[0]];
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        s->prob[i] = expf((logits[s->idx[i]] - mx) / s->p.temperature);
        sum += s->prob[i];
    }
    for (int64_t i = 0; i < n; i++) s->prob[i] = (float)(s->prob[i] / sum);
    /* top-p: the smallest prefix whose mass reaches p; min-p: drop what is below min_p x max */
    int64_t keep = n;
    if (s->p.top_p < 1.0f) {
        double c = 0;
        for (int64_t i = 0; i < n; i++) {
            c += s->prob[i];
            if (c >= s->p.top_p) { keep = i + 1; break; }
        }
    }
    if (s->p.min_p > 0)
        for (int64_t i = 1; i < keep; i++)
            if (s->prob[i] < s->p.min_p * s->prob[0]) { keep = i; break; }
    double mass = 0;
    for (int64_t i = 0; i < keep; i++) mass += s->prob[i];
    const double u = (double)(splitmix(&s->state) >> 11) * (1.0 / 9007199254740992.0) * mass;
    double c = 0;
    for (int64_t i = 0; i < keep; i++) {
        c += s->prob[i];
        if (u < c) return (int32_t)s->idx[i];
    }
    return (int32_t)s->idx[keep - 1];
}
