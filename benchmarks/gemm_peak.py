"""Print this machine's fp32 and bf16 matmul throughput at training shapes, as JSON.

    python benchmarks/gemm_peak.py [--seconds 0.5]

Every other benchmark states its speed as a fraction of the peak it measures the same way.
"""

from __future__ import annotations

import argparse
import json

import torch

from mortal.bench import gemm_peak
from mortal.runs import environment


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=0.5, help="timing per shape and dtype")
    args = p.parse_args()
    res = gemm_peak(seconds=args.seconds)
    env = environment()
    print(json.dumps({
        "benchmark": "gemm_peak",
        "cpu": env["cpu"],
        "torch": env["torch"],
        "threads": torch.get_num_threads(),
        "date": env["date"],
        "fp32_gflops": res["peak_gflops"]["float32"],
        "bf16_gflops": res["peak_gflops"]["bfloat16"],
        "bf16_over_fp32": round(res["peak_gflops"]["bfloat16"] / res["peak_gflops"]["float32"], 2),
        "shapes": res["shapes"],
    }, indent=2))


if __name__ == "__main__":
    main()
