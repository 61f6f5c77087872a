#!/bin/bash
# Copy finished run directories into results/runs/NAME without their checkpoints (the records:
# config, environment, metrics, results, reports, tables, figures), then regenerate RESULTS.md.
#   scripts/keep_run_records.sh NAME=RUN_DIR [NAME=RUN_DIR ...]
set -euo pipefail
cd "$(dirname "$0")/.."
for pair in "$@"; do
  name=${pair%%=*}; src=${pair#*=}
  test -f "$src/results.json" || { echo "$src has no results.json (unfinished?)" >&2; exit 2; }
  rm -rf "results/runs/$name"; mkdir -p "results/runs/$name"
  (cd "$src" && find . -type f ! -name '*.safetensors' ! -name '*.tmp' -print0 |
     xargs -0 -I{} cp --parents {} "$OLDPWD/results/runs/$name/")
done
python -m mortal results results/runs --out RESULTS.md > /dev/null
echo "RESULTS.md regenerated from results/runs"
