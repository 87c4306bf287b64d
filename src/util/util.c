/* Small shared helpers: errors, allocation, time, whole-file I/O with atomic writes. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../dsv4_internal.h"

static _Thread_local char g_err[2048];

const char *dsv4_last_error(void) { return g_err; }

int dsv4_fail(const char *fmt, ...) {
    /* formatted aside first: a caller may pass dsv4_last_error() itself as an argument */
    char buf[sizeof g_err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(g_err, buf, sizeof g_err);
    return -1;
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "dsv4: out of memory allocating %zu bytes\n", n); abort(); }
    return p;
}

void *xcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) { fprintf(stderr, "dsv4: out of memory allocating %zu x %zu bytes\n", n, sz); abort(); }
    return p;
}

double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Text inputs (configs, token lists) are bounded: a larger file is a mistake, not data. */
#define READ_FILE_MAX (1ull << 30)

char *read_file(const char *path, size_t *len) {
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) { dsv4_fail("%s: cannot open: %s", path, strerror(errno)); return NULL; }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) { close(fd); dsv4_fail("%s: not a regular file", path); return NULL; }
    if ((unsigned long long)sb.st_size > READ_FILE_MAX) { close(fd); dsv4_fail("%s: too large (%lld bytes)", path, (long long)sb.st_size); return NULL; }
    FILE *f = fdopen(fd, "rb");
    if (!f) { close(fd); dsv4_fail("%s: cannot open: %s", path, strerror(errno)); return NULL; }
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); dsv4_fail("%s: cannot seek", path); return NULL; }
    long n = ftell(f);
    if (n < 0) { fclose(f); dsv4_fail("%s: cannot tell size", path); return NULL; }
    rewind(f);
    char *buf = xmalloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f); free(buf); dsv4_fail("%s: short read", path); return NULL;
    }
    fclose(f);
    buf[n] = 0;
    if (len) *len = (size_t)n;
    return buf;
}

int write_file_atomic(const char *path, const void *data, size_t len) {
    size_t pl = strlen(path);
    char *tmp = xmalloc(pl + 32);
    snprintf(tmp, pl + 32, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { int r = dsv4_fail("%s: cannot create: %s", tmp, strerror(errno)); free(tmp); return r; }
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int r = dsv4_fail("%s: write failed: %s", tmp, strerror(errno));
            close(fd); unlink(tmp); free(tmp); return r;
        }
        p += w; left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int r = dsv4_fail("%s: cannot flush: %s", tmp, strerror(errno)); unlink(tmp); free(tmp); return r;
    }
    if (rename(tmp, path) != 0) {
        int r = dsv4_fail("%s: cannot rename into place: %s", path, strerror(errno)); unlink(tmp); free(tmp); return r;
    }
    free(tmp);
    return 0;
}

int sync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return dsv4_fail("%s: cannot open: %s", dir, strerror(errno));
    const int rc = fsync(fd);
    close(fd);
    return rc ? dsv4_fail("%s: fsync failed: %s", dir, strerror(errno)) : 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

int remove_tree(const char *dir) {
    struct stat sb;
    if (lstat(dir, &sb) != 0) return 0;
    return nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

float *dup_floats(const float *src, int64_t n) {
    float *d = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (n > 0) memcpy(d, src, sizeof(float) * (size_t)n);
    return d;
}

void crash_point(const char *what, int64_t step) {
    const char *e = getenv("DSV4_CRASH_AT");
    if (!e) return;
    const size_t n = strlen(what);
    if (strncmp(e, what, n) || e[n] != ':' || strtoll(e + n + 1, NULL, 10) != step) return;
    fprintf(stderr, "dsv4: DSV4_CRASH_AT=%s: exiting here\n", e);
    _exit(86);
}
