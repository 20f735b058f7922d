#!/usr/bin/env bash
# The command line on a fresh clone: build and register the example tools,
# then call the calculator in the sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/register-examples.sh

echo
echo '$ work-engine call calculator --args '"'"'{"op": "add", "a": 2, "b": 2}'"'"
env -u WORK_ENGINE_URL "$we" call calculator --args '{"op": "add", "a": 2, "b": 2}'
echo
echo "Registered in $WORK_ENGINE_DATA_DIR. Try:"
echo "  $we tools list"
echo "  $we call text_stats --args '{\"text\": \"to be or not to be\"}' --json"
echo "  $we call file_read --args '{\"path\": \"/docs/architecture.md\"}'"
