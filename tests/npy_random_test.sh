#!/usr/bin/env bash
# src/util/npy_random.c against NumPy: SeedSequence words, PCG64 raw draws and
# Generator.integers(..., dtype=np.int64) for a grid of seeds (up to 2^64-1), bounds (every branch
# of random_bounded_uint64_fill), offsets, sizes, sequences of calls on one generator (the 32-bit
# spare half kept between calls) and the Engram demo's default multipliers, all bit for bit.
# tests/npy_random_check.py prints "SPEC = VALUES" with NumPy; a small C driver (built here with
# ASan + UBSan, once with unsigned __int128 and once with the 64-bit-halves fallback) reads the
# SPECs and prints the same lines from the C code; the lines must be identical.
# Run from anywhere: tests/npy_random_test.sh. Prints "ok ..." / "FAIL ..." lines and a final
# "npy_random: N passed, M failed"; exits 1 on any failure. Needs gcc and /usr/bin/python3 with
# NumPy (Debian: python3-numpy).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-/usr/bin/python3}
CC=${CC:-gcc}
TEST_TMP_NAME=npy-random . tests/lib.sh
finish() { echo "npy_random: $passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }

cat > "$TMP/driver.c" <<'EOF'
/* Reads case SPECs (see tests/npy_random_check.py), prints "SPEC = VALUES" from npy_random.c. */
#define _POSIX_C_SOURCE 200809L /* strtok_r */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/npy_random.h"

static char *buf;          /* output of one case */
static size_t len, cap;

static void put(const char *s) {
    size_t n = strlen(s);
    if (len + n + 1 > cap) {
        cap = 2 * (len + n + 1);
        buf = realloc(buf, cap);
        if (!buf) { perror("realloc"); exit(2); }
    }
    memcpy(buf + len, s, n + 1);
    len += n;
}
static void put_u64(uint64_t v) { char t[32]; snprintf(t, sizeof t, "%s%" PRIu64, len ? " " : "", v); put(t); }
static void put_i64(int64_t v) { char t[32]; snprintf(t, sizeof t, "%s%" PRId64, len ? " " : "", v); put(t); }

static uint64_t parse_u64(const char *s) { return strtoull(s, NULL, 10); }
static int64_t parse_i64(const char *s) { return strtoll(s, NULL, 10); }

/* one integers() call: closed = endpoint=True */
static void integers(NpyRng *r, int64_t lo, int64_t hi, int64_t n, int closed) {
    int64_t *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    if (!v) { perror("malloc"); exit(2); }
    int rc = closed ? npy_rng_integers_i64_closed(r, lo, hi, n, v) : npy_rng_integers_i64(r, lo, hi, n, v);
    if (rc != 0) put(len ? " error" : "error");
    else for (int64_t i = 0; i < n; i++) put_i64(v[i]);
    free(v);
}

int main(void) {
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (!*line) continue;
        char spec[4096];
        snprintf(spec, sizeof spec, "%s", line);
        len = 0;
        put("");
        char *save = NULL;
        char *kind = strtok_r(line, " ", &save);
        char *a[5] = {0};
        for (int i = 0; i < 5; i++) a[i] = strtok_r(NULL, " ", &save);
        if (!kind || !a[0]) { fprintf(stderr, "bad spec: %s\n", spec); return 2; }
        NpyRng r;
        npy_rng_seed(&r, parse_u64(a[0]));
        if (!strcmp(kind, "words")) {
            uint32_t w[64];
            size_t nw = 0;
            char *save2 = NULL;
            for (char *t = strtok_r(a[0], ",", &save2); t && strcmp(t, "-") && nw < 64; t = strtok_r(NULL, ",", &save2))
                w[nw++] = (uint32_t)parse_u64(t);
            uint64_t st[4];
            npy_seedseq_generate_state64(w, nw, 4, st);
            for (int i = 0; i < 4; i++) put_u64(st[i]);
            put(" |");
            npy_rng_seed_words(&r, w, nw);
            for (int i = 0; i < 3; i++) put_u64(npy_rng_next64(&r));
        } else if (!strcmp(kind, "seedseq")) {
            uint32_t w[2];
            size_t nw = npy_seed_to_words(parse_u64(a[0]), w);
            uint64_t st[4];
            npy_seedseq_generate_state64(w, nw, 4, st);
            for (int i = 0; i < 4; i++) put_u64(st[i]);
        } else if (!strcmp(kind, "raw")) {
            for (int64_t i = 0, n = parse_i64(a[1]); i < n; i++) put_u64(npy_rng_next64(&r));
        } else if (!strcmp(kind, "int") || !strcmp(kind, "closed")) {
            integers(&r, parse_i64(a[1]), parse_i64(a[2]), parse_i64(a[3]), !strcmp(kind, "closed"));
        } else if (!strcmp(kind, "seq")) {
            char *save2 = NULL;
            int first = 1;
            for (char *op = strtok_r(a[1], ";", &save2); op; op = strtok_r(NULL, ";", &save2), first = 0) {
                if (!first) put(" |");
                char *f[4] = {0}, *save3 = NULL;
                f[0] = strtok_r(op, ":", &save3);
                for (int i = 1; i < 4; i++) f[i] = strtok_r(NULL, ":", &save3);
                if (!strcmp(f[0], "r")) {
                    for (int64_t i = 0, n = parse_i64(f[1]); i < n; i++) put_u64(npy_rng_next64(&r));
                } else {
                    integers(&r, parse_i64(f[1]), parse_i64(f[2]), parse_i64(f[3]), !strcmp(f[0], "c"));
                }
            }
        } else if (!strcmp(kind, "engram")) {
            /* engram_demo_v1.py NgramHashMapping.__init__, in C:
             *   half_bound = max(1, (INT64_MAX // tokenizer_vocab_size) // 2)
             *   rng(seed + 10007 * layer_id).integers(0, half_bound, size=max_ngram_size)
             *   multipliers = r * 2 + 1 */
            int64_t seed = parse_i64(a[0]), layer = parse_i64(a[1]), vocab = parse_i64(a[2]);
            int64_t nmax = parse_i64(a[3]);
            int64_t half_bound = (INT64_MAX / vocab) / 2;
            if (half_bound < 1) half_bound = 1;
            npy_rng_seed(&r, (uint64_t)(seed + 10007 * layer));
            int64_t rv[16];
            if (nmax > 16 || npy_rng_integers_i64(&r, 0, half_bound, nmax, rv) != 0) { put("error"); }
            else {
                for (int64_t i = 0; i < nmax; i++) put_i64(rv[i]);
                put(" |");
                for (int64_t i = 0; i < nmax; i++) put_i64(rv[i] * 2 + 1);
            }
        } else {
            fprintf(stderr, "unknown case kind: %s\n", kind);
            return 2;
        }
        printf("%s = %s\n", spec, buf);
    }
    free(buf);
    return 0;
}
EOF

# NumPy's side
if ! "$PY" tests/npy_random_check.py > "$TMP/expected.txt" 2> "$TMP/py.err"; then
  bad "tests/npy_random_check.py failed: $(head -c 400 "$TMP/py.err")"; finish
fi
n_cases=$(wc -l < "$TMP/expected.txt")
if [ "$n_cases" -lt 100 ]; then bad "tests/npy_random_check.py printed only $n_cases cases"; finish; fi
sed 's/ = .*$//' "$TMP/expected.txt" > "$TMP/specs.txt"
ok "numpy $("$PY" -c 'import numpy; print(numpy.__version__)'): $n_cases reference cases"

# the C side, built twice: native 128-bit integers and the portable fallback
for variant in int128 no-int128; do
  defs=""
  [ "$variant" = no-int128 ] && defs="-DNPY_RANDOM_NO_INT128"
  exe="$TMP/driver-$variant"
  if ! $CC -std=c11 -O1 -g -Wall -Wextra -Werror -fsanitize=address,undefined -fno-sanitize-recover=undefined \
      $defs -Isrc -o "$exe" "$TMP/driver.c" src/util/npy_random.c 2> "$TMP/cc.err"; then
    bad "$variant: compile: $(head -c 600 "$TMP/cc.err")"; continue
  fi
  if ! timeout 300 "$exe" < "$TMP/specs.txt" > "$TMP/got-$variant.txt" 2> "$TMP/run.err" \
      || grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$TMP/run.err"; then
    bad "$variant: driver failed or sanitizer report: $(head -c 600 "$TMP/run.err")"; continue
  fi
  # one ok/FAIL line per case group, each failing case named
  for group in seedseq raw words int closed seq engram; do
    exp=$(grep -c "^$group " "$TMP/expected.txt")
    mism=$(diff <(grep "^$group " "$TMP/expected.txt") <(grep "^$group " "$TMP/got-$variant.txt") | grep -c '^<')
    if [ "$mism" -eq 0 ] && [ "$(grep -c "^$group " "$TMP/got-$variant.txt")" -eq "$exp" ]; then
      ok "$variant: $group: $exp cases identical"
    else
      bad "$variant: $group: $mism of $exp cases differ, e.g.:"
      diff <(grep "^$group " "$TMP/expected.txt") <(grep "^$group " "$TMP/got-$variant.txt") | head -4 | cut -c1-300
    fi
  done
  if cmp -s "$TMP/expected.txt" "$TMP/got-$variant.txt"; then ok "$variant: whole output identical ($n_cases lines)"
  else bad "$variant: output differs from NumPy's"; fi
done

# the Engram demo default (seed 0, layer_ids [1, 15], 3-grams, |V'| = 98627 per ENGRAM.md)
grep '^engram 0 1 98627 3 \|^engram 0 15 98627 3 ' "$TMP/expected.txt" | sed 's/^/      numpy: /'
finish
