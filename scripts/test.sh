#!/usr/bin/env bash
# Every test, from a fresh Debian 12 machine: install what is missing, build (release with
# -Werror; ASan+UBSan with libFuzzer), run the unit tier under the sanitizers, short fuzz runs,
# then the whole suite (unit + integration against a real registry, PostgreSQL, skopeo and umoci;
# boots in QEMU; the web builder in Chromium).
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh test || exit 1
jobs=$(nproc)
# The Debian fixtures (mmdebstrap from Debian's archive: minutes on a machine that has none,
# mostly downloading) are made while the code builds. They are cached under XDG_CACHE_HOME; the
# suite's fixture tests wait for them (the scripts hold a lock) and fail if they could not be made.
mkdir -p build
(tests/fixtures/debian-base.sh && tests/fixtures/debian-kernel.sh) >build/fixtures.log 2>&1 &
# Each step's wall time, for the summary.
timings=()
step_name=
step_started=$SECONDS
step() {
  [ -z "$step_name" ] || timings+=("$(printf '%5d s  %s' $((SECONDS - step_started)) "$step_name")")
  step_name=$*
  step_started=$SECONDS
  echo
  echo "== $*"
}
# CI may show only the end of the output, so every failure is recorded as it happens and repeated,
# with what names it, after the last step.
failed=()
fail() { failed+=("$*"); }
# ctest's list of failed tests, then the first sanitizer or test verdicts in their output.
ctest_failures() {
  local what=$1 dir=$2 line
  while read -r line; do fail "$what: $line"; done < <(
    sed -n '/The following tests FAILED/,$p' "$dir/ctest.log" | grep -E '^[[:space:]]*[0-9]+ - ')
  while read -r line; do fail "  $line"; done < <(
    grep -hE '^SUMMARY: |runtime error:|: Failure$' "$dir/Testing/Temporary/LastTest.log" 2>/dev/null |
      head -5)
}

# One clang build with ASan+UBSan (the fuzz preset, at -O0 to build quickly) gives both the unit
# tier under the sanitizers and the libFuzzer targets.
step "Building the unit tests and the fuzz targets (clang, ASan+UBSan, libFuzzer)"
if cmake --preset fuzz >/dev/null && cmake --build --preset fuzz -j "$jobs"; then
  step "Unit tests under ASan+UBSan"
  if ! ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest --preset fuzz -j "$jobs" 2>&1 | tee build/fuzz/ctest.log; then
    fail "unit tests under ASan+UBSan"
    ctest_failures "  sanitized" build/fuzz
  fi
  step "Short fuzz runs (${POK8S_FUZZ_SECONDS:-20} s each, $jobs at a time)"
  # A failing run leaves NAME.failed: its verdict and, when small, the input in base64 to replay.
  fuzz_one() {
    local f=$1 name corpus work out
    name=$(basename "$f")
    out=build/fuzz/$name
    corpus=tests/fuzz/corpus/${name#fuzz_}
    work=$(mktemp -d)
    rm -f "$out".failed "$out"-crash-* "$out"-timeout-* "$out"-oom-* "$out"-leak-*
    [ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
    if "$f" -max_total_time="${POK8S_FUZZ_SECONDS:-20}" -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$out-" "$work" >"$out.log" 2>&1; then
      echo "$name: $(grep -Eo 'Done [0-9]+ runs.*' "$out.log" | tail -1)"
    else
      echo "$name: FAILED"; tail -40 "$out.log"
      {
        echo "$name: $(grep -m1 -E '==ERROR|runtime error:|ALARM|out-of-memory|deadly signal' "$out.log")"
        grep -m1 '^SUMMARY: ' "$out.log" | sed 's/^/  /'
        for a in "$out"-*-*; do
          [ -f "$a" ] || continue
          if [ "$(stat -c %s "$a")" -le 2048 ]; then
            echo "  input $(basename "$a"), base64: $(base64 -w0 "$a")"
          else
            echo "  input $(basename "$a"): $(stat -c %s "$a") bytes"
          fi
        done
      } >"$out.failed"
    fi
    rm -rf "$work"
  }
  export -f fuzz_one
  find build/fuzz/tests/fuzz -maxdepth 1 -name 'fuzz_*' -type f -executable | sort |
    xargs -P "$jobs" -I{} bash -c 'fuzz_one "$1"' _ {}
  for f in build/fuzz/fuzz_*.failed; do
    [ -f "$f" ] || continue
    while read -r line; do fail "$line"; done <"$f"
  done
else
  fail "the clang ASan+UBSan build"
fi

step "Installing the browser test's Playwright from npm (tests/browser/package-lock.json)"
npm ci --prefix tests/browser --no-audit --no-fund || fail "npm ci in tests/browser"

step "Building the release preset (-Werror)"
if cmake --preset release >/dev/null && cmake --build --preset release -j "$jobs"; then
  step "The whole suite: unit and integration"
  if ! ctest --preset release -j "$jobs" 2>&1 | tee build/release/ctest.log; then
    fail "the whole suite"
    ctest_failures "  release" build/release
  fi
else
  fail "the release build"
fi

step "Summary"
# The ten slowest tests of the whole suite and the time of each part, so a regression shows in
# every run (CI's budget: the whole command in 45 minutes on 2 cores).
if [ -f build/release/ctest.log ]; then
  echo "The ten slowest tests:"
  sed -n 's/^ *[0-9]*\/[0-9]* Test *#[0-9]*: \([^ ]*\) [. ]*\(Passed\|\*\*\*[A-Za-z]*\|Failed\) *\([0-9.]*\) sec$/\3 \1/p' \
    build/release/ctest.log | sort -rn | head -10 | awk '{printf "  %8.1f s  %s\n", $1, $2}'
  grep -h 'Total Test time (real)' build/release/ctest.log | sed 's/^/  the whole suite: /'
fi
for t in "${timings[@]}"; do echo "  $t"; done
echo "  test.sh in all: $((SECONDS / 60)) min $((SECONDS % 60)) s"
if [ ${#failed[@]} -eq 0 ]; then
  echo "test.sh: every step passed"
  exit 0
fi
printf '%s\n' "${failed[@]}"
echo "test.sh: ${#failed[@]} failure line(s) above"
exit 1
