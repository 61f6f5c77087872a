"""Fully connected layers and the permutation-invariant MLP the FF paper compares against.

`Dense` computes linear + ReLU as one autograd function (`_LinearReLU`) whose matmuls run in the
autocast dtype (bf16 on AMX CPUs) in the layouts the CPU's GEMM likes: the weight gradient is
(dz^T contiguous) @ x, not autograd's strided dz^T @ x, which ran at half speed here. The
gradient reaches the fp32 master weights in fp32 (bias gradient summed in fp32).
"""

from __future__ import annotations

import torch
from torch import nn


class _ReLUStraightThrough(torch.autograd.Function):
    """ReLU forward; identity backward, so silent units still receive a gradient (used with FF's
    peer normalisation, which must be able to wake dead units up)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad


def relu_st(x: torch.Tensor) -> torch.Tensor:
    """ReLU whose gradient passes through unchanged (straight-through)."""
    return _ReLUStraightThrough.apply(x)


ACTIVATIONS = {"relu": torch.relu, "relu_st": relu_st}


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's if it is on for these tensors' device, else the inputs'."""
    dev = tensors[0].device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.result_type(*tensors)


class _LinearReLU(torch.autograd.Function):
    """relu(x @ W^T + b) with matmuls in the dtype of `wc` (the weight, or a low-precision copy
    of it); straight-through backward if asked. Gradients reach `weight` and `bias`.

    Layout: when x is a transposed view of a contiguous (D, N) tensor ("feature-major"), the
    layer computes W @ x^T and returns a transposed view again, so a stack stays feature-major:
    then the forward is a plain (out, in) @ (in, N) GEMM and the weight gradient dz^T @ x reads
    both operands as stored. Batch-major inputs work too (the weight gradient then transposes
    dz once: a strided-operand GEMM ran at half speed here)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,  # noqa: D102
                wc: torch.Tensor, straight_through: bool) -> torch.Tensor:
        dt = wc.dtype
        feature_major = feature_major_view(x)
        xc = x.to(dt)
        with torch.autocast(x.device.type, enabled=False):
            if feature_major:  # (out, in) @ (in, N) -> (out, N) storage of an (N, out) tensor
                n, out = x.shape[0], wc.shape[0]
                h = torch.empty_strided((n, out), (1, n), dtype=dt, device=x.device)
                torch.addmm(bias.to(dt)[:, None], wc, xc.t(), out=h.t()).clamp_(min=0)
            else:
                h = torch.addmm(bias.to(dt), xc, wc.t()).clamp_(min=0)
        ctx.save_for_backward(xc, wc if ctx.needs_input_grad[0] else None,
                              None if straight_through else h)
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype)
        return h

    @staticmethod
    def backward(ctx, dh: torch.Tensor):  # noqa: D102
        xc, wc, h = ctx.saved_tensors
        dz = dh.to(xc.dtype)
        if h is not None:
            dz = dz.masked_fill(h <= 0, 0)
        dzt = dz.t().contiguous()  # (out, N): free when dz is already feature-major
        gx = gw = gb = None
        with torch.autocast(xc.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                gx = (torch.mm(wc.t(), dzt).t() if feature_major_view(xc)
                      else torch.mm(dz, wc)).to(ctx.dtypes[0])
            if ctx.needs_input_grad[1]:
                gw = torch.mm(dzt, xc).to(ctx.dtypes[1])
            if ctx.needs_input_grad[2]:  # a matrix-vector product: faster than sum(1)
                gb = torch.mv(dzt, dzt.new_ones(dzt.shape[1])).to(ctx.dtypes[2])
        return gx, gw, gb, None, None


def feature_major_view(x: torch.Tensor) -> bool:
    """Whether 2-D x is the transposed view of a contiguous (D, N) tensor (and not itself
    contiguous, as a single column or row would be)."""
    return x.dim() == 2 and x.t().is_contiguous() and not x.is_contiguous()


class Dense(nn.Module):
    """Linear map followed by an activation: one hidden layer, usable by any learning rule.

    init="fan_out" draws weights from N(0, 1/d_out), the FF papers' choice; "default" keeps
    PyTorch's uniform fan-in init.
    """

    def __init__(self, d_in: int, d_out: int, act: str = "relu", init: str = "default") -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.act = ACTIVATIONS[act]
        self.act_name = act
        if init == "fan_out":
            nn.init.normal_(self.linear.weight, 0.0, d_out**-0.5)
            nn.init.zeros_(self.linear.bias)
        elif init != "default":
            raise ValueError(f"unknown init {init!r}")

    # Activations may arrive feature-major (a transposed view of (D, N)); see _LinearReLU.
    feature_major = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.linear.weight, self.linear.bias
        if self.act_name in ("relu", "relu_st") and x.dim() == 2:
            wc = w.detach().to(compute_dtype(x, w))
            return _LinearReLU.apply(x, w, b, wc, self.act_name == "relu_st")
        return self.act(self.linear(x))


def dense_stack(d_in: int, widths: tuple[int, ...] | list[int], act: str = "relu",
                init: str = "default") -> nn.ModuleList:
    """Hidden layers d_in -> widths[0] -> ... -> widths[-1], each a `Dense`."""
    dims = [d_in, *widths]
    return nn.ModuleList(
        Dense(a, b, act, init) for a, b in zip(dims[:-1], dims[1:], strict=True)
    )


class MLP(nn.Module):
    """A stack of hidden layers and a linear classifier on top (trained end to end by backprop)."""

    def __init__(self, d_in: int, widths: tuple[int, ...], n_classes: int, dropout: float = 0.0,
                 input_dropout: float = 0.0):
        super().__init__()
        self.layers = dense_stack(d_in, widths)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        self.head = nn.Linear(widths[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(x)
        for layer in self.layers:
            x = self.dropout(layer(x))
        return self.head(x)
