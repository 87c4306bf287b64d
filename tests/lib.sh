# The test scripts' shared harness (sourced, with TEST_TMP_NAME set): a scratch directory
# removed on exit, the sanitizer settings, the ok/bad counters and the common checks.
TMP=$(mktemp -d "/tmp/dsv4-${TEST_TMP_NAME:-test}.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok    $*"; }
bad() { failed=$((failed + 1)); echo "FAIL  $*"; }
sanitizer_clean() { ! grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$1"; }
expect_error() {   # name, needle, command...: a non-zero exit (not a signal) naming the needle
  local name=$1 needle=$2; shift 2
  "$@" > "$TMP/out.txt" 2> "$TMP/err.txt"; local rc=$?
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -qF -- "$needle" "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt"; then
    ok "$name -> exit $rc: $(head -c 160 "$TMP/err.txt" | tr '\n' ' ')"
  else bad "$name: exit $rc, stderr: $(head -c 300 "$TMP/err.txt")"; fi
}
run() {   # NAME command...: succeeds exactly when the command exits 0 with no sanitizer report
  local name=$1; shift
  if "$@" > "$TMP/out.txt" 2> "$TMP/err.txt" && sanitizer_clean "$TMP/err.txt"; then return 0; fi
  bad "$name: exit status or sanitizer report: $(head -c 400 "$TMP/err.txt")"
  return 1
}
