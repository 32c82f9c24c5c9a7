#!/usr/bin/env bash
# Benchmark: the service API (`pok8s serve`, SQLite) under load from wrk on loopback while two
# builds run — a build's status (GET /api/v1/builds/ID), the list of builds
# (GET /api/v1/builds?limit=50, 52 builds in the database) and, as a baseline, GET /api/v1/health
# (no token, one count). Requests per second, p99 latency and errors (non-2xx answers and socket
# errors) per endpoint; then the same once the builds are canceled, to show what they cost the API.
# Then the service under abuse (a service of its own, one build running and one queued): health and
# status with and without 2,000 idle or slow connections and 500 open event streams held by
# bench/abuse_client.py from other loopback addresses, and the service's memory under a header
# flood. With POK8S_BASELINE_BIN (a pok8s built from an earlier commit) the abuse part runs for it
# too, and the table shows both with ratios.
# Usage: bench/service.sh [SECONDS [CONNECTIONS]]   (defaults 15 and 16; wrk runs 2 threads)
#   POK8S_BIN           the pok8s to measure (default build/release/bin/pok8s)
#   POK8S_BASELINE_BIN  a pok8s to compare with in the abuse part (optional)
#   POK8S_BENCH_PARTS   "api abuse" (default), or one of them
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
connections=${2:-16}
pok8s=${POK8S_BIN:-$PWD/build/release/bin/pok8s}
baseline=${POK8S_BASELINE_BIN:-}
parts=${POK8S_BENCH_PARTS:-api abuse}
[ -x "$pok8s" ] || { echo "build first: cmake --preset release && cmake --build --preset release" >&2; exit 1; }
[ -z "$baseline" ] || [ -x "$baseline" ] || { echo "POK8S_BASELINE_BIN $baseline is not executable" >&2; exit 1; }
# Thousands of sockets in this shell's children (wrk, the abuse client) and in the service.
ulimit -n "$(ulimit -Hn)"
for t in wrk curl python3; do
  command -v $t >/dev/null || { echo "$t is missing: ./scripts/install-deps.sh test" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/pok8s-bench-service.XXXXXX)
server=
holder=
stop_service() {
  if [ -n "$holder" ]; then kill "$holder" 2>/dev/null || true; wait "$holder" 2>/dev/null || true; holder=; fi
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true  # the service stops its builds, then exits
    for _ in $(seq 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$server" 2>/dev/null || true  # its builds die with it (PR_SET_PDEATHSIG)
    wait "$server" 2>/dev/null || true
  fi
  server=
}
cleanup() {
  stop_service
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

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
# start_service BIN DATA ARGS...: sets server, port, url and auth (an API token of the admin's).
start_service() {
  local bin=$1 data=$2 login session csrf token
  shift 2
  "$bin" --cache "$cache" --json serve --listen 127.0.0.1:0 --data "$data" "$@" \
    >"$data.out" 2>"$data.log" &
  server=$!
  port=
  for _ in $(seq 300); do
    port=$(sed -n 's/^{"event":"listening","port":\([0-9]*\)}$/\1/p' "$data.out")
    [ -n "$port" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$data.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$port" ] || { echo "pok8s serve did not start listening:" >&2; cat "$data.log" >&2; exit 1; }
  url=http://127.0.0.1:$port
  # The login token is in a file of the data directory (earlier pok8s printed it on stdout).
  if [ -s "$data/login-token" ]; then login=$(cat "$data/login-token")
  else login=$(sed -n '/one-time token:$/{n;p;q}' "$data.out"); fi
  # Log in with the one-time token, then make an API token; everything after uses the token.
  session=$(curl -fsS -c "$data.cookies" -H 'Content-Type: application/json' \
    -d "{\"token\": \"$login\"}" "$url/api/v1/session")
  csrf=$(echo "$session" | json "['csrfToken']")
  token=$(curl -fsS -b "$data.cookies" -H 'Content-Type: application/json' -H "X-CSRF-Token: $csrf" \
    -d '{"name": "bench"}' "$url/api/v1/tokens" | json "['token']")
  auth="Authorization: Bearer $token"
}
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

# wrk_run URL [WRK ARGS...]: "REQ/S P99_MS ERRORS" (p99 "n/a" when no request completed).
wrk_run() {
  local target=$1
  shift
  wrk -t2 -c"$connections" -d"${seconds}s" --latency --timeout 5s -H "$auth" "$@" "$target" \
    >"$work/wrk.out" 2>&1 || { cat "$work/wrk.out" >&2; exit 1; }
  python3 - "$work/wrk.out" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}
rps = re.search(r"Requests/sec:\s*([\d.]+)", text).group(1)
m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
p99 = f"{float(m.group(1)) * scale[m.group(2)]:.2f}" if m else "n/a"
bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
print(rps, p99, errors)
EOF
}
ratio() {
  python3 -c 'import sys
a, b = sys.argv[1:]
print("n/a" if "n/a" in (a, b) or float(b) == 0 else f"{float(a) / float(b):.2f}x")' "$1" "$2"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

api_part() {
  start_service "$pok8s" "$work/data" --jobs 2 --allow-local-sources
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
      echo "a build ended before the benchmark: $s0 $s1" >&2; tail -20 "$work/data.log" >&2; exit 1 ;;
    esac
    sleep 0.5
  done
  [ "$s0 $s1" = "running running" ] || { echo "the builds did not start: $s0 $s1" >&2; exit 1; }
  total=$(api GET '/api/v1/builds?limit=1' | json "['total']")

  endpoints=("/api/v1/builds/${builds[0]}" "/api/v1/builds?limit=50" "/api/v1/health")
  names=(status list health)
  for e in "${endpoints[@]}"; do api GET "$e" >/dev/null; done  # each answers 200 before the load
  declare -gA rps p99 bad running
  measure() {  # LABEL
    local i r p e
    for i in "${!endpoints[@]}"; do
      read -r r p e < <(wrk_run "$url${endpoints[$i]}")
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
  stop_service

  echo
  echo "pok8s serve (SQLite), wrk -t2 -c$connections -d${seconds}s on loopback, $total builds in the database ($(nproc) cores)"
  printf '  %-34s %10s %9s %8s %8s %10s %9s\n' endpoint "req/s" "p99 (ms)" errors builds "idle req/s" "idle p99"
  for i in "${!endpoints[@]}"; do
    n=${names[$i]}
    printf '  %-34s %10.1f %9s %8s %8s %10.1f %9s\n' "GET ${endpoints[$i]/${builds[0]}/ID}" \
      "${rps[busy.$n]}" "${p99[busy.$n]}" "${bad[busy.$n]}" "${running[busy.$n]}/2" \
      "${rps[idle.$n]}" "${p99[idle.$n]}"
  done
  met() { python3 -c "import sys; print('met' if float(sys.argv[1]) >= 200 and float(sys.argv[2]) <= 50 else 'NOT met')" "$1" "$2"; }
  echo "  goal under two builds: >= 200 req/s and p99 <= 50 ms: status $(met "${rps[busy.status]}" "${p99[busy.status]}"), list $(met "${rps[busy.list]}" "${p99[busy.list]}")"
  echo "  req/s under builds / idle: status $(ratio "${rps[busy.status]}" "${rps[idle.status]}"), list $(ratio "${rps[busy.list]}" "${rps[idle.list]}"), health $(ratio "${rps[busy.health]}" "${rps[idle.health]}")"
  echo "  build steps when the load ended: $progress"
}

# abuse_run NAME BIN: one service with a build running (a conversion) and one queued; health and
# status without and with the held connections; its memory under a header flood. Fills res[NAME.*].
declare -A res
abuse_run() {
  local name=$1 bin=$2 running queued r p e held rss0 rss1 hwm phase
  echo "abuse: $name ($bin)" >&2
  start_service "$bin" "$work/abuse-$name" --jobs 1 --allow-local-sources
  running=$(submit "v7.1-$name" jq)
  queued=$(submit "v7.2-$name" jq)
  for _ in $(seq 600); do
    case "$(state "$running")" in
      running) break ;;
      queued) sleep 0.5 ;;
      *) echo "the build ended before the benchmark:" >&2; api GET "/api/v1/builds/$running" >&2; exit 1 ;;
    esac
  done
  [ "$(state "$running")" = running ] || { echo "the build did not start" >&2; exit 1; }
  for phase in quiet abused; do
    if [ $phase = abused ]; then
      python3 bench/abuse_client.py hold --port "$port" --seconds $((seconds * 2 + 60)) \
        --idle 1000 --slow 1000 --sse 500 --token "${auth#Authorization: Bearer }" \
        --build "$queued" >"$work/hold.out" 2>&1 &
      holder=$!
      sleep 20  # the client opens its 2,500 connections 100 at a time
      held=$(tail -1 "$work/hold.out")
      echo "  $held (after 20 s)" >&2
    fi
    read -r r p e < <(wrk_run "$url/api/v1/health")
    res[$name.$phase.health]="$r $p $e"
    read -r r p e < <(wrk_run "$url/api/v1/builds/$running")
    res[$name.$phase.status]="$r $p $e"
    echo "  $phase: health ${res[$name.$phase.health]}, status ${res[$name.$phase.status]} (req/s, p99 ms, errors)" >&2
  done
  res[$name.held]="$held; at the end: $(tail -1 "$work/hold.out")"
  kill "$holder" 2>/dev/null || true
  wait "$holder" 2>/dev/null || true
  holder=
  # Memory: what the service holds before, at its peak and after 64 connections send 1 KB header
  # lines as fast as it reads them, for 20 s.
  rss0=$(rss_kb "$server")
  python3 bench/abuse_client.py flood --port "$port" --seconds 20 --connections 64 \
    >"$work/flood.out" 2>&1 || true
  sleep 2
  if kill -0 "$server" 2>/dev/null; then
    rss1=$(rss_kb "$server") hwm=$(hwm_kb "$server")
    res[$name.memory]="$((rss0 / 1024)) $((hwm / 1024)) $((rss1 / 1024))"
    res[$name.alive]=yes
  else
    res[$name.memory]="$((rss0 / 1024)) n/a n/a"
    res[$name.alive]=no
  fi
  res[$name.flooded]=$(tail -1 "$work/flood.out" | awk '{print int($3 / 1048576)}')
  for b in "$running" "$queued"; do api POST "/api/v1/builds/$b/cancel" "{}" >/dev/null 2>&1 || true; done
  stop_service
}

abuse_part() {
  local n c q a b goal
  abuse_run pok8s "$pok8s"
  [ -z "$baseline" ] || abuse_run baseline "$baseline"
  echo
  echo "pok8s serve under abuse: 2,000 idle or slow connections (1,000 each) and 500 event streams from 127.0.1.x, one build running; wrk -t2 -c$connections -d${seconds}s --timeout 5s on 127.0.0.1 ($(nproc) cores)"
  printf '  %-10s %-7s %10s %9s %7s %13s %11s %7s\n' service call "req/s" "p99 (ms)" errors "abused req/s" "abused p99" errors
  for n in pok8s ${baseline:+baseline}; do
    for c in health status; do
      read -r -a q <<<"${res[$n.quiet.$c]}"
      read -r -a a <<<"${res[$n.abused.$c]}"
      printf '  %-10s %-7s %10.1f %9s %7s %13.1f %11s %7s\n' "$n" "$c" "${q[0]}" "${q[1]}" "${q[2]}" "${a[0]}" "${a[1]}" "${a[2]}"
    done
    echo "  $n: ${res[$n.held]}"
    read -r -a q <<<"${res[$n.memory]}"
    echo "  $n memory, header flood of 20 s (64 connections, ${res[$n.flooded]} MiB sent): RSS ${q[0]} MiB before, peak ${q[1]} MiB, ${q[2]} MiB after; alive after: ${res[$n.alive]}"
  done
  read -r -a a <<<"${res[pok8s.abused.health]}"
  read -r -a q <<<"${res[pok8s.abused.status]}"
  goal=$(python3 -c "import sys; h, s = sys.argv[1:]; print('met' if h != 'n/a' and float(h) <= 50 and float(s) >= 5000 else 'NOT met')" "${a[1]}" "${q[0]}")
  echo "  goal under abuse: health p99 <= 50 ms and status >= 5,000 req/s: $goal"
  if [ -n "$baseline" ]; then
    read -r -a b <<<"${res[baseline.abused.status]}"
    echo "  status req/s under abuse, pok8s / baseline: $(ratio "${q[0]}" "${b[0]}")"
  fi
}

case " $parts " in *" api "*) api_part ;; esac
case " $parts " in *" abuse "*) abuse_part ;; esac
