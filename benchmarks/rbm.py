"""Speed of RBM sampling and CD-k training (784-500, batches of 100), as JSON.

    python benchmarks/rbm.py [--batch-size 100] [--hidden 500] [--steps 30] [--threads 1]

Measures in one run: the bf16/fp32 matmul peak at this RBM's shape, block-Gibbs sweeps per second
(one sweep: v -> h -> v, two matmuls of batch x 784 x 500 plus sampling), CD-1 and CD-10
training examples per second, and their matmul FLOP/s as fractions of the peak, each in fp32 and
bf16 (bf16 only where the matmul unit has it: emulated bf16 is not worth timing). FLOPs: a Gibbs
sweep does 2 matmuls (2 * 2 * b * n_vis * n_hid); a CD-k update does the
positive hidden pass, the reconstruction, k - 1 further sweeps, the final hidden pass and the two
statistic matmuls: (2k + 3) matmuls of b x n_vis x n_hid.
"""

from __future__ import annotations

import argparse
import json

import torch

from mortal.bench import gemm_peak, seconds_per_step
from mortal.loop import native_bf16
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
    env = environment()
    out.update({"cpu": env["cpu"], "threads": torch.get_num_threads(), "torch": env["torch"],
                "date": env["date"], "git_revision": env["git_revision"]})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
