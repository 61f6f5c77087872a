"""FF training speed on the paper's 4x2000 MNIST net, against backprop on the same net, as JSON.

    python benchmarks/ff_mnist.py [--batch-size B] [--rounds 7] [--steps 8] [--dtype auto]

Everything is measured in this one run, interleaved. The matrix unit of a shared host drifts by
2x within seconds, so the headline fraction of peak is paired: every FF training step (the
fused, compiled step a full run uses) is timed next to a block of 2000x2000x2000 matmuls
(the best shape here) of the same FLOPs, in alternating order, and the fraction is the median
over pairs of (FF FLOP/s / that block's FLOP/s); likewise against the step's own matmuls alone
(the same shapes, no other work: how much of the step is not matmul). Each round also times
a burst of matmuls at the training shapes, taking the best 30 ms window as the round's peak
(`..._of_burst_peak`: a harder bar, as the best window of a noisy rate beats a 1 s mean), the
unfused reference step and backprop on the same layers; speeds are medians over rounds.
Evaluation of both FF classification modes is timed on 10,000 images.

`--dtype auto` (the default, as in the recipes) is bf16 where the matmul unit has it and fp32
elsewhere; the peaks, the paired blocks and the key names (`..._of_bf16_peak` or
`..._of_fp32_peak`) follow it. Emulated bf16 (about 1 % of fp32's speed) is never timed.

FLOPs counted are those the step performs: FF, per layer and example, a forward and a
weight-gradient matmul for each of the positive and negative copies (8 * fan_in * fan_out),
except that the first layer computes the image part shared by a positive and its negative once
(as a full run does: `label_width`), so 4 * (784 - 10) * 2000 + 8 * 10 * 2000 there; backprop,
forward, weight gradient and input gradient (6 * fan_in * fan_out; the first layer needs no
input gradient).
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
from mortal.bench import gemm_gflops, seconds_per_step
from mortal.data.negatives import embed_label, wrong_labels
from mortal.loop import DTYPE_TAGS, DTYPES, autocast, make_optimizer, native_bf16, resolve_dtype
from mortal.recipes import ff_supervised_mnist as recipe
from mortal.rules import ff
from mortal.runs import environment


def ff_flops_per_example(dims: list[int], label_width: int = 0) -> float:
    """Matmul FLOPs of one FF step per positive example; with label_width k the first layer's
    shared image part (all but k inputs) is multiplied once per pair."""
    layers = list(zip(dims[:-1], dims[1:], strict=True))
    a, b = layers[0]
    first = 4.0 * (a - label_width) * b + 8.0 * label_width * b if label_width else 8.0 * a * b
    return first + sum(8.0 * a * b for a, b in layers[1:])


def bp_flops_per_example(dims: list[int], n_classes: int = 10) -> float:
    layers = list(zip(dims[:-1], dims[1:], strict=True)) + [(dims[-1], n_classes)]
    return sum((4.0 if i == 0 else 6.0) * a * b for i, (a, b) in enumerate(layers))


def paired_fractions(step, flops: float, dims: list[int], rows: int, pairs: int,
                     dtype: str = "bfloat16", label_width: int = 0
                     ) -> tuple[list[float], list[float]]:
    """For each of `pairs` FF steps, its FLOP/s over that of an adjacent block of square
    matmuls of equal FLOPs in `dtype`, and over the step's own matmuls (same shapes) run alone;
    the order within each pair alternates so drift favours neither side."""
    bf = DTYPES[dtype]
    sq_a, sq_b = torch.randn(2000, 2000).to(bf), torch.randn(2000, 2000).to(bf)
    n_sq = max(1, round(flops / (2 * 2000**3)))
    # the fused step's matmuls: forward W x^T (units, N) and weight gradient dz x (units,
    # fan_in); with label_width, the first layer's shared image part on rows / 2 columns and
    # its label part on all rows
    def mms(a: int, b: int, n: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(b, a).to(bf), torch.randn(a, n).to(bf), torch.randn(b, n).to(bf),
                torch.randn(n, a).to(bf))

    layers = list(zip(dims[:-1], dims[1:], strict=True))
    own = [mms(a, b, rows) for a, b in layers[1:]]
    a, b = layers[0]
    own += ([mms(a - label_width, b, rows // 2), mms(label_width, b, rows)] if label_width
            else [mms(a, b, rows)])

    def square() -> None:
        for _ in range(n_sq):
            torch.mm(sq_a, sq_b)

    def own_mms() -> None:
        for w, xt, dz, x in own:
            torch.mm(w, xt)
            torch.mm(dz, x)

    sq_flops = n_sq * 2 * 2000**3
    own_flops = sum(2 * (w.shape[0] * w.shape[1] * xt.shape[1]) * 2 for w, xt, _, _ in own)
    to_square, to_own = [], []
    for k in range(pairs):
        times = {}
        for name, f in ((("ff", step), ("sq", square), ("own", own_mms)) if k % 2 == 0
                        else (("own", own_mms), ("sq", square), ("ff", step))):
            t0 = time.perf_counter()
            f()
            times[name] = time.perf_counter() - t0
        to_square.append((flops / times["ff"]) / (sq_flops / times["sq"]))
        to_own.append((flops / times["ff"]) / (own_flops / times["own"]))
    return to_square, to_own


def peak(dtype: str, shapes: list[tuple[int, int, int]], seconds: float) -> float:
    """Best GFLOP/s over `shapes` of (m, k) @ (k, n) in `dtype` (a short burst each)."""
    return max(gemm_gflops(m, k, n, dtype, seconds) for m, k, n in shapes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=8, help="training steps per burst")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                   help="also time evaluation modes (a) and (b) on 10,000 images")
    args = p.parse_args()
    args.dtype = resolve_dtype(args.dtype)
    tag = DTYPE_TAGS[args.dtype]
    sets = {"dtype": args.dtype}
    if args.batch_size:
        sets["batch_size"] = str(args.batch_size)
    cfg = configs.build(recipe.Config, sets)
    torch.manual_seed(0)
    dims = [784, *cfg.widths]
    b = cfg.batch_size
    w = cfg.widths[0]
    # Matmul shapes of training: the FF batch (pos + neg rows), a 2000-row block, the first
    # layer; square 2000^3 for reference.
    shapes = [(2 * b, w, w), (w, 2 * b, w), (2000, 2000, 2000), (2 * b, 784, w)]

    x = torch.rand(b, 784)
    y = torch.randint(0, 10, (b,))
    net = recipe.build(cfg, 784)
    net.fuse = "compiled"  # what a full run uses (fuse="auto" on runs of 1000+ steps)
    eager = recipe.build(cfg, 784)
    eager.fuse = "off"
    x_pos, x_neg = embed_label(x, y), embed_label(x, wrong_labels(y))
    mlp = MLP(784, cfg.widths, 10)
    opt = make_optimizer("adam", mlp.parameters(), 1e-3)

    k = ff.label_width(recipe.training(cfg))  # the image part shared by pos and neg, as in a run

    def ff_step() -> None:
        net.train_step(x_pos, x_neg, label_width=k)

    def ff_eager_step() -> None:
        eager.train_step(x_pos, x_neg)

    def bp_step() -> None:
        with autocast(x.device, args.dtype):
            loss = F.cross_entropy(mlp(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    ff_step()  # compiles the fused step
    compile_s = time.perf_counter() - t0
    for _ in range(3):  # warm-up: allocator, oneDNN kernels
        ff_step()
        ff_eager_step()
        bp_step()
    rounds: list[dict] = []
    pair_sq: list[float] = []
    pair_own: list[float] = []
    for _ in range(args.rounds):
        sq, own = paired_fractions(ff_step, ff_flops_per_example(dims, k) * b, dims, 2 * b,
                                   args.steps, args.dtype, k)
        pair_sq += sq
        pair_own += own
        fp32 = peak("float32", shapes if tag == "fp32" else shapes[:1], 0.15)
        run_peak = peak("bfloat16", shapes, 0.15) if tag == "bf16" else fp32  # run's dtype
        ff_s = seconds_per_step(ff_step, args.steps)
        eager_s = seconds_per_step(ff_eager_step, args.steps)
        bp_s = seconds_per_step(bp_step, args.steps)
        ff_gflops = ff_flops_per_example(dims, k) * b / ff_s / 1e9
        bp_gflops = bp_flops_per_example(dims) * b / bp_s / 1e9
        rounds.append({"run_peak": run_peak, "fp32_peak": fp32, "ff_ex_s": b / ff_s,
                       "ff_eager_ex_s": b / eager_s,
                       "ff_eager_frac": ff_flops_per_example(dims) * b / eager_s / 1e9 / run_peak,
                       "bp_ex_s": b / bp_s, "ff_gflops": ff_gflops, "bp_gflops": bp_gflops,
                       "ff_frac": ff_gflops / run_peak, "bp_frac": bp_gflops / run_peak,
                       "ff_over_bp": bp_s / ff_s})

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    out = {
        "benchmark": "ff_mnist",
        "net": dims,
        "batch_size": b,
        "dtype": args.dtype,
        "rounds": args.rounds,
        "native_bf16": native_bf16(),
        "gemm_peak_gflops": {**({"bfloat16": round(med("run_peak"), 1)} if tag == "bf16"
                                else {}), "float32": round(med("fp32_peak"), 1)},
        "ff_train_examples_per_s": round(med("ff_ex_s"), 1),
        "ff_train_gflops": round(med("ff_gflops"), 1),
        f"ff_fraction_of_{tag}_peak": round(statistics.median(pair_sq), 3),
        f"ff_fraction_of_{tag}_peak_quartiles": [round(q, 3) for q in
                                                 statistics.quantiles(pair_sq, n=4)],
        "ff_fraction_of_own_matmuls": round(statistics.median(pair_own), 3),
        "ff_fraction_pairs": len(pair_sq),
        "ff_fraction_of_burst_peak": round(med("ff_frac"), 3),
        "ff_fraction_of_burst_peak_per_round": [round(r["ff_frac"], 3) for r in rounds],
        "ff_compile_seconds": round(compile_s, 1),
        "ff_unfused_examples_per_s": round(med("ff_eager_ex_s"), 1),
        f"ff_unfused_fraction_of_{tag}_peak": round(med("ff_eager_frac"), 3),
        "bp_train_examples_per_s": round(med("bp_ex_s"), 1),
        "bp_train_gflops": round(med("bp_gflops"), 1),
        f"bp_fraction_of_{tag}_peak": round(med("bp_frac"), 3),
        "ff_over_bp_examples_per_s": round(med("ff_over_bp"), 3),
        "ff_60_epoch_train_seconds_estimate": round(60 * 60000 / med("ff_ex_s"), 0),
    }
    if args.eval:
        xt = torch.rand(10000, 784)
        t0 = time.perf_counter()
        net.goodness_scores(xt)
        out["eval_goodness_10k_seconds"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        feats = net.features(xt)
        out["eval_softmax_features_10k_seconds"] = round(time.perf_counter() - t0, 2)
        head = ff.train_softmax(feats[:1000], torch.randint(0, 10, (1000,)), epochs=1)
        t0 = time.perf_counter()
        ff.softmax_predict(head, feats)
        out["eval_softmax_head_10k_seconds"] = round(time.perf_counter() - t0, 3)
    env = environment(args.dtype)
    out.update({"cpu": env["cpu"], "threads": env["torch_threads"], "torch": env["torch"],
                "date": env["date"], "git_revision": env["git_revision"]})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
