#!/usr/bin/env bash
# Installs the Debian packages dsv4 needs, only those that are missing.
# Shared by `make run`, `make test` and CI so a fresh Debian 12 machine needs no manual step.
set -eu
need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
# libraries and compilers: by package
for p in build-essential libopenblas-openmp-dev libcjson-dev libpcre2-dev libutf8proc-dev libedit-dev clang libclang-rt-14-dev gnuplot-nox \
         python3 python3-numpy ${DSV4_EXTRA_PKGS:-}; do
  have "$p" || need+=("$p")
done
# node and npm run the reference tokenizers in the tests; a node installed another way will do
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ ${#need[@]} -eq 0 ] && exit 0
echo "dsv4: installing missing Debian packages: ${need[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
