/* Token shards for training: a 32-byte header (magic "DSV4TOK", version 1, bytes per id 4,
 * token count) followed by little-endian uint32 ids. Written atomically. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

#define SHARD_MAGIC "DSV4TOK"

int shard_write(const char *path, const int32_t *ids, int64_t n) {
    const size_t bytes = 32 + 4 * (size_t)n;
    uint8_t *buf = xmalloc(bytes);
    memset(buf, 0, 32);
    memcpy(buf, SHARD_MAGIC, 7);
    const uint32_t version = 1, width = 4;
    memcpy(buf + 8, &version, 4);
    memcpy(buf + 12, &width, 4);
    const uint64_t nn = (uint64_t)n;
    memcpy(buf + 16, &nn, 8);
    for (int64_t i = 0; i < n; i++) {
        const uint32_t v = (uint32_t)ids[i];
        memcpy(buf + 32 + 4 * i, &v, 4);
    }
    int rc = write_file_atomic(path, buf, bytes);
    free(buf);
    return rc;
}

int32_t *shard_read(const char *path, int64_t *n) {
    size_t len;
    char *buf = read_file(path, &len);
    if (!buf) return NULL;
    uint32_t version, width;
    uint64_t count;
    if (len < 32 || memcmp(buf, SHARD_MAGIC, 7)) { free(buf); dsv4_fail("%s: not a dsv4 token shard (bad magic)", path); return NULL; }
    memcpy(&version, buf + 8, 4);
    memcpy(&width, buf + 12, 4);
    memcpy(&count, buf + 16, 8);
    if (version != 1 || width != 4) { free(buf); dsv4_fail("%s: unsupported shard version %u / id width %u", path, version, width); return NULL; }
    if (count > (len - 32) / 4 || 32 + 4 * count != len) {
        free(buf);
        dsv4_fail("%s: the header says %llu tokens but the file holds %zu bytes (truncated?)", path, (unsigned long long)count, len);
        return NULL;
    }
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)(count ? count : 1));
    for (uint64_t i = 0; i < count; i++) {
        uint32_t v;
        memcpy(&v, buf + 32 + 4 * i, 4);
        ids[i] = (int32_t)v;
    }
    free(buf);
    *n = (int64_t)count;
    return ids;
}
