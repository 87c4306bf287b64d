/* libFuzzer harness for the chat encoder and the completion parser (no corpus needed):
 *   make fuzz && build-fuzz/fuzz_chat -max_total_time=60
 * Any input must give a prompt or a clean error, never a crash; a parsed completion must
 * encode again. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/io/chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *err = NULL;
    for (int think = 0; think < 2; think++) {
        ChatOptions opt;
        memset(&opt, 0, sizeof opt);
        opt.thinking = think;
        opt.add_generation_prompt = 1;
        char *out = chat_encode((const char *)data, size, &opt, &err);
        free(out);
        free(err);
        err = NULL;
        char *r = NULL, *c = NULL, *t = NULL;
        chat_parse_completion((const char *)data, size, think, &r, &c, &t, &err);
        free(r); free(c); free(t); free(err);
        err = NULL;
    }
    return 0;
}
