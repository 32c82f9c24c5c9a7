#!/usr/bin/env bash
# Benchmark: the service API (`pok8s serve`, SQLite) under load from wrk on loopback while two
# builds run — a build's status (GET /api/v1/builds/ID), the list of builds
# (GET /api/v1/builds?limit=50, 52 builds in the database) and, as a baseline, GET /api/v1/health
# (no token, one count). Requests per second, p99 latency and errors (non-2xx answers and socket
# errors) per endpoint; then the same once the builds are canceled, to show what they cost the API.
# Usage: bench/service.sh [SECONDS [CONNECTIONS]]   (defaults 15 and 16; wrk runs 2 threads)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
connections=${2:-16}
pok8s=${POK8S_BIN:-$PWD/build/release/bin/pok8s}
[ -x "$pok8s" ] || { echo "build first: cmake --preset release && cmake --build --preset release" >&2; exit 1; }
for t in wrk curl python3; do
  command -v $t >/dev/null || { echo "$t is missing: ./scripts/install-deps.sh test" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/pok8s-bench-service.XXXXXX)
server=
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true  # the service stops its builds, then exits
    for _ in $(seq 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$server" 2>/dev/null || true  # its builds die with it (PR_SET_PDEATHSIG)
    wait "$server" 2>/dev/null || true
  fi
  # A build's sandbox mounts under --data; never delete through a mount left behind.
  if findmnt -rn -o TARGET | grep -q "^$work"; then
    echo "left $work in place: something is still mounted under it" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A fresh cache, so no conversion is remembered from an earlier run and the builds do real work.
cache=$work/cache
base=$(tests/fixtures/debian-base.sh)
echo "preparing: import the Debian fixture, start the service (not timed)" >&2
"$pok8s" -q --cache "$cache" image import "$base" "oci:$work/layout:base" >/dev/null
"$pok8s" --cache "$cache" --json serve --listen 127.0.0.1:0 --data "$work/data" --jobs 2 \
  --allow-local-sources >"$work/serve.out" 2>"$work/serve.log" &
server=$!
port=
for _ in $(seq 300); do
  port=$(sed -n 's/^{"event":"listening","port":\([0-9]*\)}$/\1/p' "$work/serve.out")
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "pok8s serve did not start listening:" >&2; cat "$work/serve.log" >&2; exit 1; }
url=http://127.0.0.1:$port
login=$(cat "$work/data/login-token")

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
# Log in with the one-time token, then make an API token; everything after uses the token.
session=$(curl -fsS -c "$work/cookies" -H 'Content-Type: application/json' \
  -d "{\"token\": \"$login\"}" "$url/api/v1/session")
csrf=$(echo "$session" | json "['csrfToken']")
token=$(curl -fsS -b "$work/cookies" -H 'Content-Type: application/json' -H "X-CSRF-Token: $csrf" \
  -d '{"name": "bench"}' "$url/api/v1/tokens" | json "['token']")
auth="Authorization: Bearer $token"
api() {  # METHOD PATH [BODY]
  curl -sS --fail-with-body -X "$1" -H "$auth" -H 'Content-Type: application/json' \
    ${3:+-d "$3"} "$url$2"
}
submit() {  # VERSION [PACKAGE]: a build of the base; its id
  local body
  body=$(python3 -c 'import json, sys
spec = f"apiVersion: pok8s/v1\nkind: Build\nbase: oci:{sys.argv[1]}:base\nversion: {sys.argv[2]}\n"
if sys.argv[3]: spec += f"packages: [{sys.argv[3]}]\n"
print(json.dumps({"spec": spec}))' "$work/layout" "$1" "${2:-}")
  api POST /api/v1/builds "$body" | json "['id']"
}
state() { api GET "/api/v1/builds/$1" | json "['state']"; }

# Two builds that convert the base (apt installs for minutes), run at once (--jobs 2); then 50
# more, queued behind them and canceled, so that the list has content.
builds=("$(submit v9.1 jq)" "$(submit v9.2 jq)")
for i in $(seq 50); do
  id=$(submit "v8.$i")
  api POST "/api/v1/builds/$id/cancel" "{}" >/dev/null
done
echo "waiting for builds ${builds[*]} to run" >&2
for _ in $(seq 600); do
  s0=$(state "${builds[0]}") s1=$(state "${builds[1]}")
  [ "$s0 $s1" = "running running" ] && break
  case "$s0 $s1" in *failed* | *canceled* | *succeeded*)
    echo "a build ended before the benchmark: $s0 $s1" >&2; tail -20 "$work/serve.log" >&2; exit 1 ;;
  esac
  sleep 0.5
done
[ "$s0 $s1" = "running running" ] || { echo "the builds did not start: $s0 $s1" >&2; exit 1; }
total=$(api GET '/api/v1/builds?limit=1' | json "['total']")

endpoints=("/api/v1/builds/${builds[0]}" "/api/v1/builds?limit=50" "/api/v1/health")
names=(status list health)
for e in "${endpoints[@]}"; do api GET "$e" >/dev/null; done  # each answers 200 before the load
declare -A rps p99 bad running
measure() {  # LABEL
  local i
  for i in "${!endpoints[@]}"; do
    wrk -t2 -c"$connections" -d"${seconds}s" --latency -H "$auth" "$url${endpoints[$i]}" \
      >"$work/wrk.out" 2>&1 || { cat "$work/wrk.out" >&2; exit 1; }
    read -r r p e < <(python3 - "$work/wrk.out" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}
rps = re.search(r"Requests/sec:\s*([\d.]+)", text).group(1)
v, unit = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M).groups()
bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
print(rps, f"{float(v) * scale[unit]:.2f}", errors)
EOF
    )
    rps[$1.${names[$i]}]=$r p99[$1.${names[$i]}]=$p bad[$1.${names[$i]}]=$e
    running[$1.${names[$i]}]=$(for b in "${builds[@]}"; do state "$b"; done | grep -c '^running$' || true)
    echo "  $1 ${names[$i]}: $r req/s, p99 $p ms, errors $e, builds running after: ${running[$1.${names[$i]}]}/2, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  done
}
echo "measuring under two running builds (${seconds}s per endpoint, $connections connections)" >&2
measure busy
progress=$(for b in "${builds[@]}"; do api GET "/api/v1/builds/$b" | json "['step']"; done | paste -sd '|')
for b in "${builds[@]}"; do api POST "/api/v1/builds/$b/cancel" "{}" >/dev/null || true; done
for _ in $(seq 120); do
  case "$(state "${builds[0]}") $(state "${builds[1]}")" in *running*) sleep 0.5 ;; *) break ;; esac
done
echo "measuring with no build running" >&2
measure idle

echo
echo "pok8s serve (SQLite), wrk -t2 -c$connections -d${seconds}s on loopback, $total builds in the database ($(nproc) cores)"
printf '  %-34s %10s %9s %8s %8s %10s %9s\n' endpoint "req/s" "p99 (ms)" errors builds "idle req/s" "idle p99"
for i in "${!endpoints[@]}"; do
  n=${names[$i]}
  printf '  %-34s %10.1f %9.2f %8s %8s %10.1f %9.2f\n' "GET ${endpoints[$i]/${builds[0]}/ID}" \
    "${rps[busy.$n]}" "${p99[busy.$n]}" "${bad[busy.$n]}" "${running[busy.$n]}/2" \
    "${rps[idle.$n]}" "${p99[idle.$n]}"
done
met() { python3 -c "import sys; print('met' if float(sys.argv[1]) >= 200 and float(sys.argv[2]) <= 50 else 'NOT met')" "$1" "$2"; }
echo "  goal under two builds: >= 200 req/s and p99 <= 50 ms: status $(met "${rps[busy.status]}" "${p99[busy.status]}"), list $(met "${rps[busy.list]}" "${p99[busy.list]}")"
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
echo "  req/s under builds / idle: status $(ratio "${rps[busy.status]}" "${rps[idle.status]}")x, list $(ratio "${rps[busy.list]}" "${rps[idle.list]}")x, health $(ratio "${rps[busy.health]}" "${rps[idle.health]}")x"
echo "  build steps when the load ended: $progress"
