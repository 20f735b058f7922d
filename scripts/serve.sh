#!/usr/bin/env bash
# The main job on a fresh clone: build and register the example tools, then
# run `work-engine serve` (127.0.0.1:8080 unless --addr or WORK_ENGINE_ADDR
# says otherwise; further arguments go to `serve`). Jobs are kept in
# $WORK_ENGINE_DATA_DIR/jobs.db (default ./.work-engine). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/register-examples.sh

exec "$we" serve "$@"
