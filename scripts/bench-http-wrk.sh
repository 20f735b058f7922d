#!/usr/bin/env bash
# The HTTP API under wrk (a C load generator, lighter on this machine's
# shared cores than the Rust client of `cargo bench --bench http`):
# synchronous calculator calls and submissions from 32 connections, against
# `work-engine serve` on SQLite (fsync, process) and in memory, each called
# with an API key, and in memory without keys (--insecure-no-auth): the last
# two side by side give the cost of authentication.
# Needs wrk (Debian: apt-get install wrk). DURATION (default 5s) per round,
# ROUNDS (default 3) per case; the median is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is not installed (Debian: apt-get install wrk)" >&2; exit 2; }

cargo build --release -p work-engine --quiet
cargo build --release --target wasm32-wasip2 -p calculator --quiet
target="${CARGO_TARGET_DIR:-target}"
we="$target/release/work-engine"
duration="${DURATION:-5s}"
rounds="${ROUNDS:-3}"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

for flags in "--durability fsync" "--durability process" "--store memory" "--store memory --insecure-no-auth"; do
    dir="$work/data-${flags// /}"
    mkdir -p "$dir"
    auth=""
    key=""
    if [[ "$flags" != *--insecure-no-auth* ]]; then
        key=$(WORK_ENGINE_DATA_DIR="$dir" "$we" keys create --operator | tail -1)
        auth="wrk.headers[\"Authorization\"] = \"Bearer $key\""
    fi
    cat > "$dir/call.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"args": {"op": "add", "a": 2, "b": 2}}'
wrk.headers["Content-Type"] = "application/json"
$auth
LUA
    cat > "$dir/submit.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"kind": "tool_call", "tenant_id": "bench", "payload": {"tool": "calculator", "args": {"op": "add", "a": 2, "b": 2}}, "constraints": {"not_before": "2099-01-01T00:00:00Z"}}'
wrk.headers["Content-Type"] = "application/json"
$auth
LUA
    # shellcheck disable=SC2086
    WORK_ENGINE_DATA_DIR="$dir" "$we" serve --addr 127.0.0.1:0 $flags > "$dir/out" 2>/dev/null &
    pid=$!
    until grep -q "listening on" "$dir/out" 2>/dev/null; do sleep 0.1; done
    url=$(sed -n 's/listening on //p' "$dir/out")
    curl -sf -o /dev/null --data-binary @"$target/wasm32-wasip2/release/calculator.wasm" \
        ${key:+-H "Authorization: Bearer $key"} -H 'content-type: application/wasm' "$url/v1/tools"
    for case in "call /v1/tools/calculator/call" "submit /v1/jobs"; do
        set -- $case
        rates=()
        for _ in $(seq "$rounds"); do
            rates+=("$(wrk -t1 -c32 -d"$duration" -s "$dir/$1.lua" "$url$2" | sed -n 's/Requests\/sec: *//p')")
        done
        median=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{ r[NR] = $1 } END { print r[int((NR + 1) / 2)] }')
        printf '%-22s %-8s %10s req/s (median of %s: %s)\n' "$flags" "$1" "$median" "$rounds" "${rates[*]}"
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
done
