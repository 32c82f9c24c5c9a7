#!/usr/bin/env bash
# Benchmark: `pok8s image unpack` against `umoci unpack` and plain `tar -xzf` on the same real
# Debian bookworm image (mmdebstrap → pok8s image import), alternating the tools each round and
# comparing medians of wall time, with peak memory (max RSS) of each.
# Usage: bench/unpack.sh [ROUNDS]   (needs a release build: cmake --preset release && cmake --build --preset release)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
pok8s=${POK8S_BIN:-$PWD/build/release/bin/pok8s}
[ -x "$pok8s" ] || { echo "build first: cmake --preset release && cmake --build --preset release" >&2; exit 1; }
command -v umoci >/dev/null || { echo "umoci is missing: scripts/install-deps.sh test" >&2; exit 1; }
work=$(mktemp -d /var/tmp/pok8s-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
base=$(tests/fixtures/debian-base.sh)
export POK8S_CACHE=$work/cache
"$pok8s" -q image import "$base" "oci:$work/layout:bench" >/dev/null
layer=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['manifests'][0]['digest'])" "$work/layout/index.json")
manifest=$work/layout/blobs/sha256/${layer#sha256:}
blob=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['layers'][0]['digest'].split(':')[1])" "$manifest")
size=$(stat -c %s "$work/layout/blobs/sha256/$blob")
# Warm the cache so every tool reads the same bytes from disk.
"$pok8s" -q image unpack "oci:$work/layout:bench" "$work/warm" >/dev/null && rm -rf "$work/warm"

declare -A times mems
run() {  # name, command...
  local name=$1; shift
  rm -rf "$work/out"
  local t0 t1
  sync
  t0=$(date +%s.%N)
  /usr/bin/time -f %M -o "$work/rss" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  t1=$(date +%s.%N)
  times[$name]+="$(echo "$t1 - $t0" | bc) "
  mems[$name]+="$(cat "$work/rss") "
  rm -rf "$work/out"
}
for ((i = 0; i < rounds; i++)); do
  run pok8s "$pok8s" -q image unpack "oci:$work/layout:bench" "$work/out"
  run umoci umoci unpack --image "$work/layout:bench" "$work/out"
  run tar sh -c "mkdir '$work/out' && tar -xzf '$work/layout/blobs/sha256/$blob' -C '$work/out'"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "Image: Debian bookworm minbase, one gzip layer of $((size / 1024 / 1024)) MiB; $rounds rounds, medians"
printf '%-8s %10s %14s\n' tool "time (s)" "peak RSS (MiB)"
for t in pok8s umoci tar; do
  tm=$(echo "${times[$t]}" | median); mm=$(echo "${mems[$t]}" | median)
  printf '%-8s %10.2f %14.1f\n' "$t" "$tm" "$(echo "$mm / 1024" | bc -l)"
  eval "med_$t=$tm"
done
printf 'umoci / pok8s = %.2fx   pok8s / tar = %.2fx\n' "$(echo "$med_umoci / $med_pok8s" | bc -l)" "$(echo "$med_pok8s / $med_tar" | bc -l)"
