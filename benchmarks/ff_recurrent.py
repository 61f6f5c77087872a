"""Speed of FF on the recurrent net of ff-recurrent-mnist (2x2000, 8 iterations), as JSON.

    python benchmarks/ff_recurrent.py [--rounds 5] [--steps 4] [--dtype auto]

Measured in one run, in alternating order each round: the fast training step
(mortal/rules/ff_recurrent.py, compiled, what a full run uses), the reference step (autograd
through `layer_losses`), a backprop step on the feed-forward net of the same widths
(784-2000-2000 + softmax), and a block of 2000^3 matmuls in the run's dtype beside each fast
step (the paired fraction of peak, as in ff_mnist.py); then every-label classification
(10 labels x `score_to` iterations) of 1000 images by both paths.

FLOPs counted are those each path performs: the reference multiplies every layer's whole input
(image, or layer below, and layer above or label) for positives and negatives at every
iteration, forward and weight gradient, after a bottom-up pass; the fast step multiplies the
image part once per image (forward and weight gradient), the rest as the reference. Backprop:
forward, weight and input gradients (6 * fan_in * fan_out; none for the first layer's input).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from mortal import config as configs
from mortal.arch.dense import MLP
from mortal.arch.recurrent import RecurrentStack
from mortal.loop import DTYPE_TAGS, DTYPES, autocast, make_optimizer, resolve_dtype
from mortal.recipes import ff_recurrent_mnist as rec
from mortal.rules import ff_recurrent
from mortal.runs import environment


def step_flops(widths: list[int], d_in: int, n: int, iterations: int, n_classes: int = 10,
               fast: bool = True) -> float:
    """Matmul FLOPs of one training step on n images (2n runs: positive and negative)."""
    below = [d_in, *widths[:-1]]
    above = [*widths[1:], n_classes]
    total = 0.0
    for j, (b, a, w) in enumerate(zip(below, above, widths, strict=True)):
        rows = 2 * n
        if fast and j == 0:  # image part: forward and weight gradient once per image (the
            # bottom-up pass reuses it)
            total += 2 * 2 * n * b * w + 2 * 2 * rows * iterations * a * w
        else:
            total += 2 * 2 * rows * iterations * (a + b) * w
            total += 2 * (n if fast else rows) * (b if fast else a + b) * w  # bottom-up pass
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    args = p.parse_args()
    args.dtype = resolve_dtype(args.dtype)
    tag = DTYPE_TAGS[args.dtype]
    cfg = configs.build(rec.Config, {"dtype": args.dtype})
    torch.manual_seed(0)
    n, widths = cfg.batch_size, list(cfg.widths)
    net = RecurrentStack(784, widths, damping=cfg.damping)
    opts = [make_optimizer(cfg.optimizer, layer.parameters(), cfg.lr, cfg.weight_decay)
            for layer in net.layers]
    x, y = torch.rand(n, 784), torch.randint(0, 10, (n,))
    y_neg = (y + torch.randint(1, 10, (n,))) % 10
    mlp = MLP(784, tuple(widths), 10)
    bp_opt = make_optimizer("adam", mlp.parameters(), 1e-3)
    dt = DTYPES[args.dtype]
    sq_a, sq_b = torch.randn(2000, 2000).to(dt), torch.randn(2000, 2000).to(dt)

    def fast() -> None:
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        ff_recurrent.layer_gradients(net, x, y, y_neg, cfg, compiled=True)
        for opt in opts:
            opt.step()

    def reference() -> None:
        rec.update(opts, rec.layer_losses(net, x, y, y_neg, cfg))

    def backprop() -> None:
        with autocast(x.device, args.dtype):
            loss = F.cross_entropy(mlp(x).float(), y)
        bp_opt.zero_grad(set_to_none=True)
        loss.backward()
        bp_opt.step()

    fast_flops = step_flops(widths, 784, n, cfg.iterations)
    ref_flops = step_flops(widths, 784, n, cfg.iterations, fast=False)
    dims = [784, *widths, 10]
    bp_flops = n * sum((4.0 if i == 0 else 6.0) * a * b
                       for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)))
    n_sq = max(1, round(fast_flops / (2 * 2000**3)))

    def square() -> None:
        for _ in range(n_sq):
            torch.mm(sq_a, sq_b)

    t0 = time.perf_counter()
    fast()  # compiles the elementwise passes
    compile_s = time.perf_counter() - t0
    for f in (fast, reference, backprop, square):
        f()
    times: dict[str, list[float]] = {"fast": [], "reference": [], "backprop": []}
    paired: list[float] = []
    for r in range(args.rounds):
        order = [("fast", fast), ("reference", reference), ("backprop", backprop)]
        for name, f in order if r % 2 == 0 else order[::-1]:
            for _ in range(args.steps):
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
                if name == "fast":  # its own square-matmul block, alternating sides
                    t1 = time.perf_counter()
                    square()
                    sq_s = time.perf_counter() - t1
                    paired.append((fast_flops / times[name][-1]) / (n_sq * 2 * 2000**3 / sq_s))
    med = {k: statistics.median(v) for k, v in times.items()}
    xb = torch.rand(1000, 784)
    ref_cfg = configs.build(rec.Config, {"dtype": args.dtype, "impl": "reference"})
    rec.goodness_by_iteration(net, xb, cfg, cfg.score_to, compiled=True)  # compile its shapes
    t0 = time.perf_counter()
    rec.goodness_by_iteration(net, xb, cfg, cfg.score_to, compiled=True)
    eval_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec.goodness_by_iteration(net, xb, ref_cfg, cfg.score_to)
    eval_ref = time.perf_counter() - t0
    env = environment(args.dtype)
    steps_per_epoch = 60000 // n
    print(json.dumps({
        "benchmark": "ff_recurrent",
        "net": [784, *widths], "iterations": cfg.iterations, "batch_size": n,
        "dtype": args.dtype, "rounds": args.rounds, "steps_per_round": args.steps,
        "fast_train_examples_per_s": round(n / med["fast"], 1),
        "fast_train_gflops": round(fast_flops / med["fast"] / 1e9, 1),
        f"fast_fraction_of_{tag}_peak": round(statistics.median(paired), 3),
        f"fast_fraction_of_{tag}_peak_quartiles": [round(q, 3) for q in
                                                   statistics.quantiles(paired, n=4)],
        "fast_step_gflop": round(fast_flops / 1e9, 1),
        "reference_step_gflop": round(ref_flops / 1e9, 1),
        "reference_train_examples_per_s": round(n / med["reference"], 1),
        "fast_over_reference_examples_per_s": round(med["reference"] / med["fast"], 3),
        "bp_feedforward_train_examples_per_s": round(n / med["backprop"], 1),
        "bp_feedforward_train_gflops": round(bp_flops / med["backprop"] / 1e9, 1),
        "fast_over_bp_examples_per_s": round(med["backprop"] / med["fast"], 4),
        "fast_compile_seconds": round(compile_s, 1),
        "every_label_1000_images_seconds_fast": round(eval_fast, 2),
        "every_label_1000_images_seconds_reference": round(eval_ref, 2),
        "fast_epoch_train_seconds_estimate": round(steps_per_epoch * med["fast"], 1),
        "cpu": env["cpu"], "threads": env["torch_threads"], "torch": env["torch"],
        "date": env["date"], "git_revision": env["git_revision"],
    }, indent=2))


if __name__ == "__main__":
    main()
