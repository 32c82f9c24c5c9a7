#!/usr/bin/env bash
# Every test, from a fresh Debian 12 machine: install what is missing, build (release with
# -Werror; ASan+UBSan with libFuzzer), run the unit tier under the sanitizers, short fuzz runs,
# then the whole suite (unit + integration against a real registry, PostgreSQL, skopeo and umoci;
# boots in QEMU; the web builder in Chromium).
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh test || exit 1
jobs=$(nproc)
status=0
step() { echo; echo "== $*"; }

# One clang build with ASan+UBSan (the fuzz preset, at -O0 to build quickly) gives both the unit
# tier under the sanitizers and the libFuzzer targets.
step "Building the unit tests and the fuzz targets (clang, ASan+UBSan, libFuzzer)"
if cmake --preset fuzz >/dev/null && cmake --build --preset fuzz -j "$jobs"; then
  step "Unit tests under ASan+UBSan"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --preset fuzz -j "$jobs" || status=1
  step "Short fuzz runs (${POK8S_FUZZ_SECONDS:-20} s each, $jobs at a time)"
  fuzz_one() {
    local f=$1 name corpus work rc=0
    name=$(basename "$f")
    corpus=tests/fuzz/corpus/${name#fuzz_}
    work=$(mktemp -d)
    [ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
    if "$f" -max_total_time="${POK8S_FUZZ_SECONDS:-20}" -rss_limit_mb=2048 -timeout=10 "$work" \
        >"build/fuzz/$name.log" 2>&1; then
      echo "$name: $(grep -Eo 'Done [0-9]+ runs.*' "build/fuzz/$name.log" | tail -1)"
    else
      echo "$name: FAILED"; tail -40 "build/fuzz/$name.log"; rc=1
    fi
    rm -rf "$work"
    return $rc
  }
  export -f fuzz_one
  find build/fuzz/tests/fuzz -maxdepth 1 -name 'fuzz_*' -type f -executable | sort |
    xargs -P "$jobs" -I{} bash -c 'fuzz_one "$1"' _ {} || status=1
else
  status=1
fi

step "Installing the browser test's Playwright from npm (tests/browser/package-lock.json)"
npm ci --prefix tests/browser --no-audit --no-fund || status=1

step "Building the release preset (-Werror)"
if cmake --preset release >/dev/null && cmake --build --preset release -j "$jobs"; then
  step "The whole suite: unit and integration"
  ctest --preset release -j "$jobs" || status=1
else
  status=1
fi
exit $status
