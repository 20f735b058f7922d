#!/usr/bin/env bash
# Builds the example tools for wasm32-wasip2 and the work-engine binary,
# then registers the tools in $WORK_ENGINE_DATA_DIR (default ./.work-engine).
# Sourced by quickstart.sh and serve.sh; sets $we to the binary's path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

cargo build --release --target wasm32-wasip2 -p calculator -p text_stats -p file_read
cargo build -p work-engine

export WORK_ENGINE_DATA_DIR="${WORK_ENGINE_DATA_DIR:-.work-engine}"
target="${CARGO_TARGET_DIR:-target}"
we="$target/debug/work-engine"
tools="$target/wasm32-wasip2/release"

# Local registrations: without a server in the way.
env -u WORK_ENGINE_URL "$we" register "$tools/calculator.wasm"
env -u WORK_ENGINE_URL "$we" register "$tools/text_stats.wasm"
env -u WORK_ENGINE_URL "$we" register "$tools/file_read.wasm" --allow-dir "$PWD/docs:/docs"
