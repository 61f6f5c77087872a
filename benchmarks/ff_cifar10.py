"""Speed of the ff-cifar10 nets (32x32x3 locally connected maps, 11x11 fields), as JSON.

    python benchmarks/ff_cifar10.py [--depth 2] [--batch-size 100] [--steps 3] [--threads N]

Measures, in one run, for each way of computing FF on these nets: a recurrent FF training
step (positive and negative copies of the batch, `iterations` damped iterations, every layer's
loss and update); the every-label evaluation (10 runs of score_to iterations); and a backprop
step on the same local layers with a linear softmax; plus the matmul peak in the run's dtype
(the recipe's dtype=auto). The ways:

* "fast" (the recipe's default, impl=fast): the hand-written passes of mortal/rules/ff_maps.py
  on blocks of `block` = 4 x 8 output positions (2.1x the useful FLOPs), every iteration's
  weight gradient in one matmul per block; elementwise passes compiled.
* "band" (impl=reference): autograd through `LocallyConnected2d(impl="band")`, one-row blocks
  of 32 positions (3.8x the useful FLOPs), the blocks built once per step (`frozen`).
* "gather": autograd through the gather implementation (patch copies, thin matmuls).

FLOPs count the locally connected layers' useful multiply-adds: FF does a forward and a
weight-gradient matmul per copy and iteration, backprop adds the input gradient (except the
first layer's). The backprop step is the same in every way (autograd, band) and is reported
once. These layers have 3 outputs per position, so expect a small fraction of the peak.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mortal.bench import gemm_peak
from mortal.loop import DTYPE_TAGS, autocast, make_optimizer
from mortal.recipes import ff_cifar10 as recipe
from mortal.recipes import ff_recurrent_mnist as rec
from mortal.rules import ff_maps
from mortal.runs import environment


def seconds_per_call(fn: Callable[[], object], steps: int, warmup: int = 1) -> float:
    """Seconds per call of fn, after warm-up."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--goodness", default="min_ssq", choices=sorted(recipe.GOODNESS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {"benchmark": "ff_cifar10", "depth": args.depth, "batch_size": args.batch_size}
    for way in ("fast", "band", "gather"):
        res = measure(args, way)
        out["dtype"] = res["dtype"]
        out["gemm_peak_gflops"] = res.pop("gemm_peak_gflops")
        out[way] = res
    fast, band = out["fast"], out["band"]
    for k in ("ff_train", "ff_every_label_eval"):
        out[f"fast_over_band_{k}"] = round(fast[f"{k}_examples_per_s"]
                                           / band[f"{k}_examples_per_s"], 2)
        out[f"band_over_gather_{k}"] = round(band[f"{k}_examples_per_s"]
                                             / out["gather"][f"{k}_examples_per_s"], 2)
    out["bp"] = measure_bp(args)
    tag = DTYPE_TAGS[out["dtype"]]
    out["fast_ff_epoch_over_bp_epoch"] = round(
        fast["ff_epoch_seconds_estimate"] / out["bp"]["bp_epoch_seconds_estimate"], 1)
    out["bp"][f"bp_train_fraction_of_{tag}_peak"] = round(
        out["bp"].pop("bp_gflops") / out["gemm_peak_gflops"], 4)
    env = environment(out["dtype"])
    out.update({"cpu": env["cpu"], "threads": env["torch_threads"], "torch": env["torch"],
                "date": env["date"], "git_revision": env["git_revision"]})
    print(json.dumps(out, indent=2))


def measure(args: argparse.Namespace, way: str) -> dict:
    """Speeds of FF training and every-label evaluation computed one way ("fast", "band" or
    "gather": the module docstring)."""
    torch.manual_seed(0)
    cfg = recipe.Config(batch_size=args.batch_size,
                        local_impl="gather" if way == "gather" else "band",
                        impl="fast" if way == "fast" else "reference")
    b = args.batch_size
    peak = gemm_peak((cfg.dtype,), seconds=0.5)["peak_gflops"][cfg.dtype]  # dtype=auto
    tag = DTYPE_TAGS[cfg.dtype]
    x, y = torch.randn(b, 3072), torch.randint(0, 10, (b,))
    net = recipe.ff_net(cfg, args.depth)
    opts = [make_optimizer("adam", layer.parameters(), 1e-3) for layer in net.layers]
    compiled = way == "fast"  # as the recipe does on a CPU
    goodness = recipe.GOODNESS[args.goodness]

    def ff_step() -> None:  # the recipe's step: every layer's loss, each layer's optimiser
        if way == "fast":
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            ff_maps.layer_gradients(net, x, y, (y + 1) % 10, cfg, goodness, compiled)
            for opt in opts:
                opt.step()
        else:
            rec.update(opts, recipe.ff_losses(net, x, y, (y + 1) % 10, cfg, args.goodness))

    def every_label() -> None:
        recipe.every_label_scores(net, x, cfg, args.goodness, compiled)

    ff_s = seconds_per_call(ff_step, args.steps, warmup=2)
    macs = [layer.local.weight.numel() for layer in net.layers]
    ff_gflops = 4 * sum(macs) * 2 * b * cfg.iterations / ff_s / 1e9
    eval_s = seconds_per_call(every_label, 2, warmup=1)
    eval_gflops = 2 * sum(macs) * b * 10 * cfg.score_to / eval_s / 1e9
    n_train, n_test = 50000, 10000
    return {
        "impl": cfg.impl, "local_impl": cfg.local_impl,
        "block": {"fast": list(cfg.block), "band": [1, cfg.band_width]}.get(way),
        "iterations": cfg.iterations, "dtype": cfg.dtype,
        "local_macs_per_example": macs,
        "gemm_peak_gflops": peak,
        "ff_train_examples_per_s": round(b / ff_s, 2),
        f"ff_train_fraction_of_{tag}_peak": round(ff_gflops / peak, 4),
        "ff_every_label_eval_examples_per_s": round(b / eval_s, 2),
        f"ff_every_label_eval_fraction_of_{tag}_peak": round(eval_gflops / peak, 4),
        "ff_epoch_seconds_estimate": round(n_train * ff_s / b, 0),
        "ff_test_eval_seconds_estimate": round(n_test * eval_s / b, 0),
    }


def measure_bp(args: argparse.Namespace) -> dict:
    """Speed of a backprop step on the same local layers (band) plus a linear softmax."""
    torch.manual_seed(0)
    cfg = recipe.Config(batch_size=args.batch_size)
    b = args.batch_size
    x, y = torch.randn(b, 3072), torch.randint(0, 10, (b,))
    model = recipe.bp_net(cfg, args.depth)
    opt = make_optimizer("adam", model.parameters(), 1e-3)

    def bp_step() -> None:
        with autocast(x.device, cfg.dtype):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    bp_s = seconds_per_call(bp_step, max(args.steps, 5))
    bp_macs = [m.weight.numel() for m in model[: args.depth]]
    return {"bp_train_examples_per_s": round(b / bp_s, 1),
            "bp_gflops": (6 * sum(bp_macs) - 2 * bp_macs[0]) * b / bp_s / 1e9,
            "bp_epoch_seconds_estimate": round(50000 * bp_s / b, 0)}


if __name__ == "__main__":
    main()
