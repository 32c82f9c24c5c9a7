#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install what is missing, build, and start the
# factory — the web builder and the HTTP API (`pok8s serve`) on http://127.0.0.1:8080/, with its
# state in an embedded SQLite database under out/serve. On the first start it writes a one-time
# admin login token to out/serve/login-token (readable by you alone) and says so. Stop it with
# Ctrl-C; builds in progress continue at the next start.
#   POK8S_LISTEN  HOST:PORT (default 127.0.0.1:8080)
#   POK8S_SERVE_DIR  the state directory (default out/serve)
#   Further arguments go to `pok8s serve` (see docs/man/pok8s-serve.md).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh build
cmake --preset release >/dev/null
# pok8s and the node binaries its builds put into images; not the tests (scripts/test.sh builds
# those). ccache, when installed, makes a rebuild of the same code take seconds.
cmake --build --preset release --target pok8s-factory
data=${POK8S_SERVE_DIR:-$PWD/out/serve}
mkdir -p "$data"
if [ "$(id -u)" -ne 0 ] && ! grep -q "^$(id -un):" /etc/subuid 2>/dev/null; then
  echo "serve: converting a base image needs root or a subordinate id range for $(id -un) in /etc/subuid" >&2
fi
exec ./build/release/bin/pok8s serve --listen "${POK8S_LISTEN:-127.0.0.1:8080}" --data "$data" "$@"
