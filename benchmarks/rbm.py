"""Speed of RBM sampling and CD-k training (784-500, batches of 100), as JSON.

    python benchmarks/rbm.py [--batch-size 100] [--hidden 500] [--steps 30] [--threads 1]

Measures in one run: the bf16/fp32 matmul peak at this RBM's shape, block-Gibbs sweeps per second
(one sweep: v -> h -> v, two matmuls of batch x 784 x 500 plus sampling), CD-1 and CD-10
training examples per second, and their matmul FLOP/s as fractions of the peak, each in fp32 and
bf16 (bf16 only where the matmul unit has it: emulated bf16 is not worth timing). FLOPs: a Gibbs
sweep does 2 matmuls (2 * 2 * b * n_vis * n_hid); a CD-k update does the
positive hidden pass, the reconstruction, k - 1 further sweeps, the final hidden pass and the two
statistic matmuls: (2k + 3) matmuls of b x n_vis x n_hid.

Also the up-down (contrastive wake-sleep) step of dbn-mnist's DBN (784-500-500-2000, labels
joined to the top), at CD-3 and CD-10 in the top RBM, beside a backprop step (Adam) on the
feed-forward net of the same widths (784-500-500-2000-10), in the same dtype. FLOPs of an
up-down step: every lower layer does 6 matmuls (up, down, the generative prediction and its
statistics, the recognition prediction and its statistics), the top RBM a CD-k update; a
backprop step does 3 matmuls per layer (2 for the first: no input gradient).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from mortal.arch.dense import MLP
from mortal.bench import gemm_peak, seconds_per_step
from mortal.loop import autocast, make_optimizer, native_bf16
from mortal.rules import boltzmann as bz
from mortal.runs import environment


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the project runs 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    b, n_vis, n_hid = args.batch_size, 784, args.hidden
    dtypes = ("float32", "bfloat16") if native_bf16() else ("float32",)  # never emulated bf16
    peak = gemm_peak(dtypes, shapes=((b, n_vis, n_hid), (1000, 2000, 2000)))
    rbm = bz.RBM.init(n_vis, n_hid, 0)
    g = torch.Generator().manual_seed(0)
    x = bz.bernoulli(torch.full((b, n_vis), 0.13), g)
    mm_flops = 2 * b * n_vis * n_hid
    out: dict = {"benchmark": "rbm", "batch_size": b, "n_vis": n_vis, "n_hid": n_hid,
                 "gemm_peak_gflops": peak["peak_gflops"], "gemm_shapes_gflops": peak["shapes"]}
    for dtype in dtypes:
        dt_peak = peak["peak_gflops"][dtype]
        chain = bz.GibbsChain(x.clone())
        s = seconds_per_step(lambda chain=chain, dtype=dtype: chain.run(rbm, 10, g, dtype),
                             args.steps) / 10
        out[f"gibbs_sweeps_per_s_{dtype}"] = round(1 / s, 1)
        out[f"gibbs_fraction_of_peak_{dtype}"] = round(2 * mm_flops / s / 1e9 / dt_peak, 3)
        for k in (1, 10):
            s = seconds_per_step(
                lambda k=k, dtype=dtype: bz.cd_gradient(rbm, x, k, None, g, dtype), args.steps)
            out[f"cd{k}_examples_per_s_{dtype}"] = round(b / s, 1)
            out[f"cd{k}_fraction_of_peak_{dtype}"] = round(
                (2 * k + 3) * mm_flops / s / 1e9 / dt_peak, 3)
        s = seconds_per_step(lambda dtype=dtype: bz.cd_gradient(rbm, x, 1, None, g, dtype),
                             args.steps)
        out[f"cd1_epoch_seconds_estimate_{dtype}"] = round(60000 / b * s, 1)
    out.update(updown(args.batch_size, args.steps, dtypes, peak["peak_gflops"]))
    env = environment()
    out.update({"cpu": env["cpu"], "threads": torch.get_num_threads(), "torch": env["torch"],
                "date": env["date"], "git_revision": env["git_revision"]})
    print(json.dumps(out, indent=2))


def updown(b: int, steps: int, dtypes: tuple[str, ...], peak: dict[str, float]) -> dict:
    """Up-down steps per second on dbn-mnist's DBN, and against a backprop step on the same
    widths, timed alternately (median of 5 rounds) so the machine's drift affects both alike."""
    widths = (784, 500, 500, 2000)
    pairs = zip(widths[:-2], widths[1:-1], strict=True)
    rbms = [bz.RBM.init(a, c, i) for i, (a, c) in enumerate(pairs)]
    rbms.append(bz.RBM.init(widths[-2] + 10, widths[-1], 9, n_softmax=10))
    dbn = bz.DBN.from_stack(rbms)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 784, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    y1h = torch.eye(10)[y]
    mlp = MLP(784, widths[1:], 10)
    opt = make_optimizer("adam", mlp.parameters(), 1e-3)
    lower = sum(a * c for a, c in zip(widths[:-2], widths[1:-1], strict=True))
    top = (widths[-2] + 10) * widths[-1]
    dims = [*widths, 10]
    bp_flops = b * sum((4.0 if i == 0 else 6.0) * a * c
                       for i, (a, c) in enumerate(zip(dims[:-1], dims[1:], strict=True)))
    out: dict = {"updown_net": "784-500-500-2000 (+10 labels at the top)"}
    for dtype in dtypes:

        def bp_step(dtype: str = dtype) -> None:
            with autocast(x.device, dtype):
                loss = F.cross_entropy(mlp(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for k in (3, 10):
            def ud_step(k: int = k, dtype: str = dtype) -> None:
                bz.updown_step(dbn, x, y1h, k, 1e-6, g, dtype)

            ud_step(), bp_step()
            rounds = [(seconds_per_step(ud_step, steps), seconds_per_step(bp_step, steps))
                      for _ in range(5)]
            ud_s = sorted(r[0] for r in rounds)[2]
            bp_s = sorted(r[1] for r in rounds)[2]
            flops = 2 * b * (6 * lower + (2 * k + 3) * top)
            out[f"updown_cd{k}_examples_per_s_{dtype}"] = round(b / ud_s, 1)
            out[f"updown_cd{k}_fraction_of_peak_{dtype}"] = round(
                flops / ud_s / 1e9 / peak[dtype], 3)
            out[f"updown_cd{k}_epoch_seconds_estimate_{dtype}"] = round(60000 / b * ud_s, 1)
            out[f"bp_examples_per_s_{dtype}"] = round(b / bp_s, 1)
            out[f"bp_fraction_of_peak_{dtype}"] = round(bp_flops / bp_s / 1e9 / peak[dtype], 3)
            out[f"updown_cd{k}_over_bp_examples_per_s_{dtype}"] = round(bp_s / ud_s, 4)
    return out


if __name__ == "__main__":
    main()
