/* dsv4 — a C engine for the DeepSeek V4 model family. The one public header.
 *
 * Typical use:
 *   dsv4_model *m = dsv4_model_open("DeepSeek-V4-Flash", NULL);      // mmap, validate
 *   dsv4_session *s = dsv4_session_new(m, 4096);                     // KV cache for 4096 tokens
 *   dsv4_forward(s, prompt, n_prompt, logits);                       // chunked prefill
 *   dsv4_forward(s, &next, 1, logits);                               // one-token decode
 * Every function that can fail returns NULL or a negative value and leaves a message naming
 * the file, tensor or field in dsv4_last_error().
 */
#ifndef DSV4_H
#define DSV4_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DSV4_API __attribute__((visibility("default")))
#else
#define DSV4_API
#endif

typedef struct dsv4_model dsv4_model;
typedef struct dsv4_session dsv4_session;

typedef struct dsv4_open_options {
    /* Official quantisation-aware rounding (FP8 activations before FP8/FP4 GEMMs, FP8 on the
     * kv's non-RoPE dims, Hadamard + FP4 on the indexer's q/k): -1 = on exactly when the
     * checkpoint holds FP8/FP4 weights, 0 = off (exact fp32 math), 1 = on. */
    int quant_rounding;
    /* Fast mode, approximate: 1 = decode FP4 weights (the routed experts) and the Q4/Q8 weights
     * of `dsv4 quantize` against activations rounded to int8 (one scale per 32), in integer
     * dot products (FP4: about twice the speed of the exact kernel); logits move slightly
     * (`dsv4 bench --fast` reports by how much). Prefill is unchanged. 0 = exact (default). */
    int int8_activations;
} dsv4_open_options;

/* The message of the last failure in this thread ("" if none). */
DSV4_API const char *dsv4_last_error(void);

/* Opens a model directory (config.json + *.safetensors). opts may be NULL (defaults). */
DSV4_API dsv4_model *dsv4_model_open(const char *dir, const dsv4_open_options *opts);
DSV4_API void dsv4_model_close(dsv4_model *m);

DSV4_API int dsv4_vocab_size(const dsv4_model *m);
DSV4_API int dsv4_hidden_size(const dsv4_model *m);   /* d */
DSV4_API int dsv4_hc_mult(const dsv4_model *m);       /* n: the residual has n*d floats per token */
DSV4_API int dsv4_n_mtp_layers(const dsv4_model *m);

/* A decoding session: KV caches (window ring, compressed entries, compressor state, indexer
 * keys) for up to max_ctx tokens. */
DSV4_API dsv4_session *dsv4_session_new(dsv4_model *m, int64_t max_ctx);
DSV4_API void dsv4_session_free(dsv4_session *s);
DSV4_API int64_t dsv4_session_pos(const dsv4_session *s);  /* tokens processed so far */
/* Forgets every token: the next forward starts at position 0. */
DSV4_API void dsv4_session_reset(dsv4_session *s);
/* Largest number of tokens one internal prefill step processes (default 512: each weight block
 * is decoded once per chunk, so longer chunks decode less often). */
DSV4_API void dsv4_session_set_chunk(dsv4_session *s, int chunk);
/* Called after every prefill chunk with the tokens done and the total of the current call
 * (for progress bars); NULL to stop. */
typedef void (*dsv4_progress_fn)(void *user, int64_t done, int64_t total);
DSV4_API void dsv4_session_set_progress(dsv4_session *s, dsv4_progress_fn fn, void *user);

/* Runs n tokens through the model at positions pos..pos+n-1 (prefill when n > 1, decode when
 * n == 1) and appends them to the cache. logits (may be NULL) receives the vocab logits of
 * the last token. hidden (may be NULL) receives the final residual streams [n, hc_mult*d]
 * of every token, the input of the MTP block. Returns 0, or -1 with dsv4_last_error(). */
DSV4_API int dsv4_forward(dsv4_session *s, const int32_t *tokens, int64_t n, float *logits, float *hidden);

/* Speculative decoding. dsv4_forward_verify runs 1..chunk tokens in one pass like dsv4_forward,
 * but logits receives [n, vocab]: every token's prediction. Up to 4 tokens go through the decode
 * kernels, whose results per token are bit-identical to one token at a time, so verified drafts
 * reproduce plain decoding exactly. Right after it, dsv4_session_undo_last takes its last token
 * back out of the cache (a rejected draft): the session is as if it had never seen it. */
DSV4_API int dsv4_forward_verify(dsv4_session *s, const int32_t *tokens, int64_t n, float *logits, float *hidden);
DSV4_API int dsv4_session_undo_last(dsv4_session *s);

/* Runs the MTP block (layer 0) for positions mpos..mpos+n-1 of its own cache: hidden holds the
 * main model's final streams at those positions, next_tokens the token following each one.
 * logits receives [n, vocab]: the prediction of the token after next_tokens[i]. */
DSV4_API int dsv4_mtp_forward(dsv4_session *s, const float *hidden, const int32_t *next_tokens, int64_t n,
                     float *logits);

/* Engram tables read from disk: asks for the table rows that tokens[from..n) will read, where
 * tokens[0..n) are tokens expected to follow what the session holds (the token just sampled, an
 * MTP draft). Returns at once (a thread makes the requests); a no-op without such tables. */
DSV4_API void dsv4_prefetch(dsv4_session *s, const int32_t *tokens, int64_t n, int64_t from);

/* ---- tokenizer (a Hugging Face tokenizer.json with a byte-level BPE model) ---- */
typedef struct dsv4_tokenizer dsv4_tokenizer;
DSV4_API dsv4_tokenizer *dsv4_tokenizer_load(const char *tokenizer_json);
DSV4_API void dsv4_tokenizer_free(dsv4_tokenizer *tk);
DSV4_API int64_t dsv4_tokenizer_vocab_size(const dsv4_tokenizer *tk);   /* largest id + 1 */
/* UTF-8 text -> ids (no BOS added; special-token strings in the text are matched). *ids is
 * malloc'd; returns the count, or -1 (invalid UTF-8). Not safe for concurrent calls on one
 * tokenizer (it caches words). */
DSV4_API int64_t dsv4_tokenize(dsv4_tokenizer *tk, const char *text, size_t len, int32_t **ids);
/* ids -> the exact bytes (malloc'd, NUL-terminated); returns the length or -1 (unknown id). */
DSV4_API int64_t dsv4_detokenize(const dsv4_tokenizer *tk, const int32_t *ids, int64_t n, char **out);
/* The bytes one id stands for (NULL if the id is unused). */
DSV4_API const char *dsv4_token_bytes(const dsv4_tokenizer *tk, int32_t id, size_t *len);
DSV4_API int32_t dsv4_token_id(const dsv4_tokenizer *tk, const char *text);   /* -1 if none */
DSV4_API int dsv4_token_is_special(const dsv4_tokenizer *tk, int32_t id);
/* Streaming decode that never emits a broken UTF-8 sequence: call per generated id; an
 * incomplete character is held back until the next call, bytes that cannot form a character
 * become U+FFFD. id = -1 ends the stream (an unfinished character is dropped). Returns the
 * number of bytes written to out (at most cap). */
typedef struct dsv4_utf8_stream { unsigned char pending[8]; int n; } dsv4_utf8_stream;
DSV4_API size_t dsv4_stream_decode(const dsv4_tokenizer *tk, dsv4_utf8_stream *st, int32_t id, char *out, size_t cap);

/* ---- sampling ---- */
typedef struct dsv4_sampling {
    float temperature;     /* 0 = greedy */
    int top_k;             /* 0 = off */
    float top_p;           /* 1 = off */
    float min_p;           /* 0 = off */
    float repeat_penalty;  /* 1 = off */
    int repeat_last_n;     /* window of the repetition penalty */
    uint64_t seed;
} dsv4_sampling;
typedef struct dsv4_sampler dsv4_sampler;
DSV4_API dsv4_sampling dsv4_sampling_default(void);
DSV4_API dsv4_sampler *dsv4_sampler_new(const dsv4_sampling *params, int64_t vocab);
DSV4_API void dsv4_sampler_free(dsv4_sampler *s);
/* Picks the next id from logits[vocab] (modified in place), given the ids so far. */
DSV4_API int32_t dsv4_sample(dsv4_sampler *s, float *logits, const int32_t *history, int64_t n_history);

#ifdef __cplusplus
}
#endif
#endif
