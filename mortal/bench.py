"""Measure what this machine can do, so speed claims are fractions of a peak from the same run."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from mortal.loop import DTYPES

# Shapes that occur in training: (rows of a batch, fan-in, fan-out).
TRAINING_SHAPES = ((200, 2000, 2000), (1000, 2000, 2000), (2000, 2000, 2000), (1000, 784, 2000))


def gemm_gflops(m: int, k: int, n: int, dtype: str = "float32", seconds: float = 0.5,
                device: str = "cpu") -> float:
    """Sustained GFLOP/s of an (m,k) @ (k,n) matmul in `dtype`, best of a few timed bursts."""
    dt = DTYPES[dtype]
    a = torch.randn(m, k, device=device).to(dt)
    b = torch.randn(k, n, device=device).to(dt)
    for _ in range(3):
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            a @ b
            reps += 1
        if device != "cpu":
            torch.cuda.synchronize()
        rate = 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9
        best = max(best, rate)
        if time.perf_counter() > deadline:
            return best


def gemm_peak(dtypes: tuple[str, ...] = ("float32", "bfloat16"), seconds: float = 0.5,
              shapes: tuple[tuple[int, int, int], ...] = TRAINING_SHAPES) -> dict:
    """Per-shape and peak GFLOP/s for each dtype at training-relevant shapes."""
    out: dict = {"shapes": {}, "peak_gflops": {}}
    for dtype in dtypes:
        for m, k, n in shapes:
            g = gemm_gflops(m, k, n, dtype, seconds)
            out["shapes"].setdefault(f"{m}x{k}x{n}", {})[dtype] = round(g, 1)
            out["peak_gflops"][dtype] = round(max(out["peak_gflops"].get(dtype, 0.0), g), 1)
    return out


def seconds_per_step(step: Callable[[], object], steps: int) -> float:
    """Mean wall seconds of `steps` calls of step() (the benchmarks' timer)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps
