"""An energy proxy, measured rather than asserted: the matrix work and the stored activations of
one training step, per training example.

The FF paper's abstract says FF can learn "without ever storing activities"; backprop must
keep every layer's activities until its backward pass. `measure` runs one real training step
and counts (1) the multiply-adds of every matrix product it executes, forward and backward
(torch's FlopCounterMode sees every aten op, including those inside custom autograd
functions), and (2) the peak number of activation elements held for a backward pass at any
moment (torch's saved-tensor hooks: each tensor autograd saves is counted from when it is
saved until the graph that holds it is freed; a tensor saved twice is counted once).
Parameters are not activations: the step runs at two batch sizes and only the growth with the
batch is counted, which also removes weight copies such as autocast's bf16 casts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class _Saved:
    """A saved tensor's handle: counts its elements as live until autograd drops it."""

    def __init__(self, tensor: torch.Tensor, meter: _Meter, key: tuple[int, int]) -> None:
        self.tensor = tensor
        self.meter, self.key = meter, key

    def __del__(self) -> None:
        self.meter.release(self.key)


class _Meter:
    """Live and peak element counts of the distinct activation tensors autograd holds."""

    def __init__(self, params: set[int]) -> None:
        self.params = params
        self.refs: dict[tuple[int, int], int] = {}
        self.sizes: dict[tuple[int, int], int] = {}
        self.live = 0
        self.peak = 0

    def pack(self, t: torch.Tensor) -> Any:
        if t.untyped_storage().data_ptr() in self.params or t.numel() == 0:
            return t
        key = (t.untyped_storage().data_ptr(), t.numel())
        if key not in self.refs:
            self.refs[key] = 0
            self.sizes[key] = t.numel()
            self.live += t.numel()
            self.peak = max(self.peak, self.live)
        self.refs[key] += 1
        return _Saved(t, self, key)

    def release(self, key: tuple[int, int]) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= self.sizes.pop(key)
            del self.refs[key]

    @staticmethod
    def unpack(saved: Any) -> torch.Tensor:
        return saved.tensor if isinstance(saved, _Saved) else saved


def _count(step: Callable[[int], Any], n: int, params: set[int]) -> tuple[int, int]:
    """(matmul FLOPs, peak saved elements) of step(n)."""
    meter = _Meter(params)
    with FlopCounterMode(display=False) as counter, \
            torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        step(n)
    return counter.get_total_flops(), meter.peak


def measure(step: Callable[[int], Any], model: nn.Module, n_examples: int) -> dict[str, float]:
    """Run `step(n)` (one training step of `model` on n training examples) for n =
    `n_examples` and 2 * `n_examples`, and return its matrix work and its peak stored
    activations, per example (the growth from the first to the second).

    matmul_flops_per_example: 2 x multiply-adds of every matrix product (forward and backward);
    weight_passes_per_example: the same in units of one forward pass of every weight once
    (2 x number of weights), so 1 forward + 2 backward matmuls per layer is 3;
    stored_activations_per_example: peak activation elements held for backward at once."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    flops1, peak1 = _count(step, n_examples, params)
    flops2, peak2 = _count(step, 2 * n_examples, params)
    flops = flops2 - flops1
    n_weights = sum(p.numel() for name, p in model.named_parameters() if p.dim() >= 2)
    return {
        "matmul_flops_per_example": round(flops / n_examples, 1),
        "weight_passes_per_example": round(flops / n_examples / (2 * n_weights), 3),
        "stored_activations_per_example": round((peak2 - peak1) / n_examples, 1),
    }
