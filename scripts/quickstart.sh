#!/usr/bin/env bash
# The main job on a fresh clone: build the example tools for wasm32-wasip2,
# build the work-engine CLI, register the tools and call the calculator.
# Data goes to $WORK_ENGINE_DATA_DIR (default ./.work-engine).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

cargo build --release --target wasm32-wasip2 -p calculator -p text_stats -p file_read
cargo build -p work-engine

export WORK_ENGINE_DATA_DIR="${WORK_ENGINE_DATA_DIR:-.work-engine}"
target="${CARGO_TARGET_DIR:-target}"
we="$target/debug/work-engine"
tools="$target/wasm32-wasip2/release"

"$we" register "$tools/calculator.wasm"
"$we" register "$tools/text_stats.wasm"
"$we" register "$tools/file_read.wasm" --allow-dir "$PWD/docs:/docs"
echo
echo '$ work-engine call calculator --args '"'"'{"op": "add", "a": 2, "b": 2}'"'"
"$we" call calculator --args '{"op": "add", "a": 2, "b": 2}'
echo
echo "Registered in $WORK_ENGINE_DATA_DIR. Try:"
echo "  $we tools list"
echo "  $we call text_stats --args '{\"text\": \"to be or not to be\"}' --json"
echo "  $we call file_read --args '{\"path\": \"/docs/architecture.md\"}'"
