#!/bin/bash
# The ff-unsupervised-mnist study of docs/results.md: what closes the gap to the paper's 1.37 %.
# A proxy of the recipe (4x1000 instead of 4x2000, 10 epochs instead of 100) in which each cell
# changes one setting; every cell is an ordinary `mortal run`, one thread, its record in OUT/NAME.
#   scripts/ff_unsupervised_study.sh OUT [NAME ...]     (no NAME: every cell; done cells are skipped)
# The recipe's old defaults (pairwise loss, temperature 3) are pinned, so the cells mean the same
# whatever the recipe's defaults are now.
set -euo pipefail
out=${1:?usage: scripts/ff_unsupervised_study.sh OUT [NAME ...]}; shift
cd "$(dirname "$0")/.."
proxy=(--set widths=1000,1000,1000,1000 --set epochs=10 --set loss=pairwise --set temperature=3
       --set random_baseline=false --threads 1 --quiet)
declare -A cells=(
  [base]="--set random_baseline=true"
  [base-seed1]="--set seed=1"
  [threshold]="--set loss=threshold --set temperature=1"
  [thr-seed1]="--set loss=threshold --set temperature=1 --set seed=1"
  [thr-nopeer]="--set loss=threshold --set temperature=1 --set peer_weight=0"
  [thr-lr1e-3]="--set loss=threshold --set temperature=1 --set lr=1e-3"
  [thr-blur12]="--set loss=threshold --set temperature=1 --set blur_steps=12"
  [thr-theta0.5]="--set loss=threshold --set temperature=1 --set threshold=0.5"
  [thr-e30]="--set loss=threshold --set temperature=1 --set epochs=30"
  [full-e1]="--set widths=2000,2000,2000,2000 --set epochs=1 --set random_baseline=true"
)
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(base threshold base-seed1 thr-seed1 thr-theta0.5 thr-nopeer thr-lr1e-3 thr-blur12
  thr-e30 full-e1)
for name in "${names[@]}"; do
  [ -f "$out/$name/results.json" ] && continue
  # shellcheck disable=SC2086
  python -m mortal run ff-unsupervised-mnist "${proxy[@]}" ${cells[$name]:?unknown cell $name} \
    --out "$out/$name" --resume
done
