#!/bin/bash
# The "why does sleep break" test of docs/results.md (ff-sleep-mnist). The study's explanation is
# that a negative-only block silences units, and the sum-of-squares goodness (gradient 2h, zero at
# h = 0) never pushes a silent unit back. If that is the cause, a goodness whose gradient does not
# vanish at zero activity (goodness=sum or sumsq_sum, with the straight-through ReLU), or a strong
# peer normalisation, should let longer blocks work. Each cell is an ordinary `mortal run` of the study
# (2x500, 10 epochs, uniform negatives, k = 0 / 10 / 100 / epoch), one thread, its record in OUT/NAME.
#   scripts/ff_sleep_remedy.sh OUT [NAME ...]     (no NAME: every cell; done cells are skipped)
set -euo pipefail
out=${1:?usage: scripts/ff_sleep_remedy.sh OUT [NAME ...]}; shift
cd "$(dirname "$0")/.."
grid=(--set widths=500,500 --set epochs=10 --set k_values=0,10,100,-1 --set negative_sources=uniform
      --threads 1 --quiet)
declare -A cells=(
  [sumsq]=""
  [sum]="--set goodness=sum"
  [sumsq-peer0.3]="--set peer_weight=0.3"
  [sumsq_sum]="--set goodness=sumsq_sum"
  # the same net and softmax with (effectively) no FF learning: what random features give
  [untrained]="--set lr=1e-12 --set k_values=0"
)
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(sumsq sum sumsq-peer0.3 sumsq_sum untrained)
for name in "${names[@]}"; do
  [ -f "$out/$name/results.json" ] && continue
  # shellcheck disable=SC2086
  python -m mortal run ff-sleep-mnist "${grid[@]}" ${cells[$name]?unknown cell $name} --out "$out/$name" --resume
done
