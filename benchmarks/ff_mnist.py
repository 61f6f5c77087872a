"""FF training speed on the paper's 4x2000 MNIST net, against backprop on the same net, as JSON.

    python benchmarks/ff_mnist.py [--batch-size 100] [--steps 30] [--dtype bfloat16]

Everything is measured in this one run: the bf16/fp32 matmul peak (mortal.bench), FF training
throughput and its FLOP/s as a fraction of that peak, backprop training throughput on the same
layers, and evaluation time of both FF classification modes on the 10,000 test images.
FLOPs counted: FF, per layer and example, a forward and a weight-gradient matmul for each of the
positive and negative copies (8 * fan_in * fan_out); backprop, forward, weight gradient and
input gradient (6 * fan_in * fan_out; the first layer needs no input gradient).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from mortal import config as configs
from mortal.arch.dense import MLP
from mortal.bench import gemm_gflops, gemm_peak
from mortal.data.negatives import embed_label, wrong_labels
from mortal.loop import autocast, make_optimizer
from mortal.recipes import ff_supervised_mnist as recipe
from mortal.runs import environment


def ff_flops_per_example(dims: list[int]) -> float:
    return sum(8.0 * a * b for a, b in zip(dims[:-1], dims[1:], strict=True))


def bp_flops_per_example(dims: list[int], n_classes: int = 10) -> float:
    layers = list(zip(dims[:-1], dims[1:], strict=True)) + [(dims[-1], n_classes)]
    return sum((4.0 if i == 0 else 6.0) * a * b for i, (a, b) in enumerate(layers))


def timed_steps(step, steps: int, warmup: int = 3) -> float:
    """Seconds per step, after warm-up."""
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                   help="also time evaluation modes (a) and (b) on 10,000 images")
    args = p.parse_args()
    sets = {"dtype": args.dtype}
    if args.batch_size:
        sets["batch_size"] = str(args.batch_size)
    cfg = configs.build(recipe.Config, sets)
    torch.manual_seed(0)
    dims = [784, *cfg.widths]
    b = cfg.batch_size
    peak = gemm_peak(seconds=0.5)["peak_gflops"]
    # The peak at this batch's own matmul shape (2B rows), for context.
    shape_peak = gemm_gflops(2 * b, cfg.widths[0], cfg.widths[1], args.dtype)

    x = torch.rand(b, 784)
    y = torch.randint(0, 10, (b,))
    net = recipe.build(cfg, 784)
    x_pos, x_neg = embed_label(x, y), embed_label(x, wrong_labels(y))
    ff_step = timed_steps(lambda: net.train_step(x_pos, x_neg), args.steps)
    ff_rate = b / ff_step
    ff_gflops = ff_flops_per_example(dims) * ff_rate / 1e9

    mlp = MLP(784, cfg.widths, 10)
    opt = make_optimizer("adam", mlp.parameters(), 1e-3)

    def bp_step() -> None:
        with autocast(x.device, args.dtype):
            loss = F.cross_entropy(mlp(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    bp_step_s = timed_steps(bp_step, args.steps)
    bp_rate = b / bp_step_s
    bp_gflops = bp_flops_per_example(dims) * bp_rate / 1e9
    dt_peak = peak["bfloat16" if args.dtype == "bfloat16" else "float32"]
    out = {
        "benchmark": "ff_mnist",
        "net": dims,
        "batch_size": b,
        "dtype": args.dtype,
        "gemm_peak_gflops": peak,
        "gemm_gflops_at_batch_shape": round(shape_peak, 1),
        "ff_train_examples_per_s": round(ff_rate, 1),
        "ff_train_gflops": round(ff_gflops, 1),
        "ff_fraction_of_bf16_peak": round(ff_gflops / peak["bfloat16"], 3),
        "ff_fraction_of_dtype_peak": round(ff_gflops / dt_peak, 3),
        "bp_train_examples_per_s": round(bp_rate, 1),
        "bp_train_gflops": round(bp_gflops, 1),
        "bp_fraction_of_dtype_peak": round(bp_gflops / dt_peak, 3),
        "ff_over_bp_examples_per_s": round(ff_rate / bp_rate, 3),
        "ff_60_epoch_train_seconds_estimate": round(60 * 60000 / ff_rate, 0),
    }
    if args.eval:
        xt = torch.rand(10000, 784)
        t0 = time.perf_counter()
        net.goodness_scores(xt)
        out["eval_goodness_10k_seconds"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        net.features(xt)
        out["eval_softmax_features_10k_seconds"] = round(time.perf_counter() - t0, 2)
    env = environment(args.dtype)
    out.update({"cpu": env["cpu"], "threads": env["torch_threads"], "torch": env["torch"],
                "date": env["date"], "git_revision": env["git_revision"]})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
