"""What the shared first layer saves: ff-supervised-mnist's fused training step with and
without `label_width` (the image part of a positive and its negative computed once), as JSON.

    python benchmarks/ff_shared_first_layer.py [--blocks 30] [--steps 4]

The two steps are timed in alternating blocks of `--steps` steps on the same batches, so the
host's drifting matrix unit favours neither; the headline is the median over blocks of
(shared step time / unshared step time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mortal import config as configs
from mortal.data.negatives import embed_label, wrong_labels
from mortal.loop import resolve_dtype
from mortal.recipes import ff_supervised_mnist as recipe
from mortal.rules import ff
from mortal.runs import environment


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--blocks", type=int, default=30)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    args = p.parse_args()
    args.dtype = resolve_dtype(args.dtype)
    cfg = configs.build(recipe.Config, {"dtype": args.dtype})
    torch.manual_seed(0)
    b = cfg.batch_size
    net = recipe.build(cfg, 784)
    net.fuse = "compiled"  # what a full run uses
    k = ff.label_width(recipe.training(cfg))
    batches = []
    for _ in range(args.steps):
        x, y = torch.rand(b, 784), torch.randint(0, 10, (b,))
        batches.append((embed_label(x, y), embed_label(x, wrong_labels(y))))
    for width in (0, k, 0, k):  # compile both paths, warm up
        net.train_step(*batches[0], label_width=width)
    times: dict[int, list[float]] = {0: [], k: []}
    for block in range(args.blocks):
        for width in ((0, k) if block % 2 == 0 else (k, 0)):
            t0 = time.perf_counter()
            for pos, neg in batches:
                net.train_step(pos, neg, label_width=width)
            times[width].append((time.perf_counter() - t0) / len(batches))
    ratios = [s / u for s, u in zip(times[k], times[0], strict=True)]
    env = environment(args.dtype)
    print(json.dumps({
        "benchmark": "ff_shared_first_layer",
        "net": [784, *cfg.widths], "batch_size": b, "dtype": args.dtype,
        "blocks": args.blocks, "steps_per_block": args.steps,
        "unshared_step_ms_median": round(1000 * statistics.median(times[0]), 1),
        "shared_step_ms_median": round(1000 * statistics.median(times[k]), 1),
        "shared_over_unshared_step_time": round(statistics.median(ratios), 3),
        "shared_over_unshared_quartiles": [round(q, 3) for q in
                                           statistics.quantiles(ratios, n=4)],
        "cpu": env["cpu"], "threads": env["torch_threads"], "torch": env["torch"],
        "date": env["date"], "git_revision": env["git_revision"],
    }, indent=2))


if __name__ == "__main__":
    main()
