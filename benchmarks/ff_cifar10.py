"""Speed of the ff-cifar10 nets (32x32x3 locally connected maps, 11x11 fields), as JSON.

    python benchmarks/ff_cifar10.py [--depth 2] [--batch-size 100] [--steps 3] [--threads N]

Measures, in one run, for each implementation of the locally connected layer (the recipe's
default "band" and "gather"): a recurrent FF training step (positive and negative copies of the
batch, `iterations` damped iterations, every layer's loss); the every-label evaluation (10 runs
of score_to iterations); and a backprop step on the same local layers with a linear softmax;
plus the matmul peak in the run's dtype (the recipe's dtype=auto). FLOPs count the locally
connected layers' useful multiply-adds: FF does a forward and a weight-gradient matmul per copy
and iteration, backprop adds the input gradient (except the first layer's). These layers have 3
outputs per position, so the matmuls are thin: "gather" copies patches (121x the input) for a
batched matmul; "band" multiplies dense blocks (zeros outside the fields: 3.8x the useful FLOPs
at 32 columns a block) on overlapping views of the input, with no copy. Expect a small fraction
of the peak either way.
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
    for impl, reuse in (("band", True), ("band", False), ("gather", True)):
        res = measure(args, impl, reuse)
        out["dtype"] = res["dtype"]
        out["gemm_peak_gflops"] = res.pop("gemm_peak_gflops")
        out[impl if reuse else "band_blocks_per_call"] = res
    band, per_call = out["band"], out["band_blocks_per_call"]
    out["band_over_gather_ff_train"] = round(band["ff_train_examples_per_s"]
                                             / out["gather"]["ff_train_examples_per_s"], 2)
    for k in ("ff_train", "ff_every_label_eval"):  # `frozen`: blocks built once per step
        out[f"blocks_once_over_per_call_{k}"] = round(
            band[f"{k}_examples_per_s"] / per_call[f"{k}_examples_per_s"], 2)
    env = environment(out["dtype"])
    out.update({"cpu": env["cpu"], "threads": env["torch_threads"], "torch": env["torch"],
                "date": env["date"], "git_revision": env["git_revision"]})
    print(json.dumps(out, indent=2))


def measure(args: argparse.Namespace, impl: str, reuse: bool = True) -> dict:
    """Speeds of FF training, every-label evaluation and backprop with one layer impl;
    `reuse` False builds the band blocks at every call instead of once per step (the
    recipe's `frozen`; only the band implementation has blocks)."""
    torch.manual_seed(0)
    cfg = recipe.Config(batch_size=args.batch_size, local_impl=impl)
    b = args.batch_size
    peak = gemm_peak((cfg.dtype,), seconds=0.5)["peak_gflops"][cfg.dtype]  # dtype=auto
    tag = DTYPE_TAGS[cfg.dtype]
    x, y = torch.randn(b, 3072), torch.randint(0, 10, (b,))

    net = recipe.ff_net(cfg, args.depth)
    opts = [make_optimizer("adam", layer.parameters(), 1e-3) for layer in net.layers]

    def ff_step() -> None:  # the recipe's step: every layer's loss, each layer's optimiser
        if reuse:
            losses = recipe.ff_losses(net, x, y, (y + 1) % 10, cfg, args.goodness)
        else:
            losses = rec.layer_losses(net, x, y, (y + 1) % 10, cfg,
                                      recipe.GOODNESS[args.goodness])
        rec.update(opts, losses)

    def every_label() -> None:
        if reuse:
            recipe.every_label_scores(net, x, cfg, args.goodness)
        else:
            rec.goodness_by_iteration(net, x, cfg, cfg.score_to, cfg.eval_batch_size)

    ff_s = seconds_per_call(ff_step, args.steps)
    macs = [layer.local.weight.numel() for layer in net.layers]
    ff_gflops = 4 * sum(macs) * 2 * b * cfg.iterations / ff_s / 1e9
    eval_s = seconds_per_call(every_label, 1)
    eval_gflops = 2 * sum(macs) * b * 10 * cfg.score_to / eval_s / 1e9

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
    bp_gflops = (6 * sum(bp_macs) - 2 * bp_macs[0]) * b / bp_s / 1e9
    n_train, n_test = 50000, 10000
    return {
        "iterations": cfg.iterations, "dtype": cfg.dtype,
        "local_macs_per_example": macs,
        "gemm_peak_gflops": peak,
        "ff_train_examples_per_s": round(b / ff_s, 2),
        f"ff_train_fraction_of_{tag}_peak": round(ff_gflops / peak, 4),
        "ff_every_label_eval_examples_per_s": round(b / eval_s, 2),
        f"ff_every_label_eval_fraction_of_{tag}_peak": round(eval_gflops / peak, 4),
        "bp_train_examples_per_s": round(b / bp_s, 1),
        f"bp_train_fraction_of_{tag}_peak": round(bp_gflops / peak, 4),
        "ff_epoch_seconds_estimate": round(n_train * ff_s / b, 0),
        "ff_test_eval_seconds_estimate": round(n_test * eval_s / b, 0),
        "bp_epoch_seconds_estimate": round(n_train * bp_s / b, 0),
    }


if __name__ == "__main__":
    main()
