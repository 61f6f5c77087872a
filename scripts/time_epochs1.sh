#!/usr/bin/env bash
# Wall time of `mortal run RECIPE --set epochs=1` for each recipe given (default: issue #4's
# five), one after another, each with the default threads; one JSON line per recipe on stdout.
#   MORTAL_DATA=... scripts/time_epochs1.sh [RECIPE ...]   # run directories in ${OUT:-runs}/e1-RECIPE
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs}
recipes=("$@")
[ ${#recipes[@]} -eq 0 ] && recipes=(ff-local-mnist ff-unsupervised-mnist ff-recurrent-mnist
                                     ff-sleep-mnist ff-cifar10)
for r in "${recipes[@]}"; do
  s=$(date +%s)
  python -m mortal run "$r" --set epochs=1 --quiet --overwrite --out "$out/e1-$r" >&2
  rc=$?
  e=$(date +%s)
  echo "{\"recipe\": \"$r\", \"rc\": $rc, \"wall_s\": $((e - s)), \"start\": \"$(date -u -d @"$s" +%FT%TZ)\"}"
done
