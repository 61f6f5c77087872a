"""Speed of the locally connected layer (unfold + batched matmul), as JSON.

    python benchmarks/local_layer.py [--batch-size 250] [--steps 20] [--dtype auto]

On the ff-local-mnist net (4x4x128 over 10x10 fields at stride 6 -> 3x3x220 -> 2x2x512) this
measures, in one run: the bf16/fp32 matmul peak, an FF training step (positive and negative
batches together) on the locally connected net and on a dense net doing the same number of
FLOPs per layer, their FLOP/s as fractions of the peak, and a backprop step on the same locally
connected net. FLOPs counted as in ff_mnist.py: FF does a forward and a weight-gradient matmul
per copy (8 * fan_in * fan_out per position), backprop adds the input gradient.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

from mortal import config as configs
from mortal.arch.dense import dense_stack
from mortal.bench import gemm_peak, seconds_per_step
from mortal.loop import autocast, make_optimizer, native_bf16, resolve_dtype
from mortal.recipes import ff_local_mnist as recipe
from mortal.recipes import ff_supervised_mnist as sup
from mortal.rules import ff
from mortal.runs import environment


def macs_per_example(layers: nn.ModuleList) -> list[int]:
    """Multiply-adds of each locally connected layer's forward pass, per example."""
    return [m.weight.numel() for m in layers]  # positions * fan_in * fan_out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    args = p.parse_args()
    args.dtype = resolve_dtype(args.dtype)  # auto: bf16 where the matmul unit has it
    sets = {"dtype": args.dtype}
    if args.batch_size:
        sets["batch_size"] = str(args.batch_size)
    cfg = configs.build(recipe.Config, sets)
    torch.manual_seed(0)
    b = cfg.batch_size
    # emulated bf16 (no AMX or AVX512-BF16) is timed only when asked for: it takes minutes
    both = native_bf16() or args.dtype == "bfloat16"
    peak = gemm_peak(("float32", "bfloat16") if both else ("float32",), seconds=0.5)["peak_gflops"]
    dt_peak = peak[args.dtype]

    x_pos, x_neg = torch.rand(b, 784), torch.rand(b, 784)
    local = recipe.build(cfg, 784)
    macs = macs_per_example(local.layers)
    ff_local_s = seconds_per_step(lambda: local.train_step(x_pos, x_neg), args.steps)
    ff_local_gflops = 8 * sum(macs) * b / ff_local_s / 1e9

    # A dense net with the same multiply-adds per layer: widths w_i with
    # fan_in_i * w_i = macs_i, fan_in_0 = 784.
    widths, fan_in = [], 784
    for m in macs:
        widths.append(max(1, round(m / fan_in)))
        fan_in = widths[-1]
    dense = ff.FFNet(dense_stack(784, widths, cfg.activation, cfg.init), sup.rule(cfg))
    dense_macs = [a * c for a, c in zip([784, *widths[:-1]], widths, strict=True)]
    ff_dense_s = seconds_per_step(lambda: dense.train_step(x_pos, x_neg), args.steps)
    ff_dense_gflops = 8 * sum(dense_macs) * b / ff_dense_s / 1e9

    # Backprop on the same locally connected layers, with a linear softmax on top.
    layers = recipe.build(cfg, 784).layers
    head = nn.Linear(math.prod(layers[-1].out_shape), 10)
    model = nn.Sequential(*layers, nn.Flatten(), head)
    opt = make_optimizer("adam", model.parameters(), 1e-3)
    y = torch.randint(0, 10, (b,))

    def bp_step() -> None:
        with autocast(x_pos.device, args.dtype):
            loss = F.cross_entropy(model(x_pos).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    bp_s = seconds_per_step(bp_step, args.steps)
    bp_macs = sum(macs) + head.weight.numel()
    bp_gflops = (6 * bp_macs - 2 * macs[0]) * b / bp_s / 1e9

    env = environment(args.dtype)
    print(json.dumps({
        "benchmark": "local_layer",
        "net": [list(m.out_shape) for m in local.layers],
        "macs_per_example": macs,
        "dense_same_flops_widths": widths,
        "batch_size": b,
        "dtype": args.dtype,
        "gemm_peak_gflops": peak,
        "ff_local_examples_per_s": round(b / ff_local_s, 1),
        "ff_local_gflops": round(ff_local_gflops, 1),
        "ff_local_fraction_of_dtype_peak": round(ff_local_gflops / dt_peak, 3),
        "ff_dense_same_flops_examples_per_s": round(b / ff_dense_s, 1),
        "ff_dense_same_flops_gflops": round(ff_dense_gflops, 1),
        "ff_dense_fraction_of_dtype_peak": round(ff_dense_gflops / dt_peak, 3),
        "local_over_dense_examples_per_s": round(ff_dense_s / ff_local_s, 3),
        "bp_local_examples_per_s": round(b / bp_s, 1),
        "bp_local_fraction_of_dtype_peak": round(bp_gflops / dt_peak, 3),
        "ff_over_bp_examples_per_s": round(bp_s / ff_local_s, 3),
        "ff_local_60_epoch_train_seconds_estimate": round(60 * 60000 * ff_local_s / b, 0),
        "cpu": env["cpu"], "threads": env["torch_threads"], "torch": env["torch"],
        "date": env["date"], "git_revision": env["git_revision"],
    }, indent=2))


if __name__ == "__main__":
    main()
