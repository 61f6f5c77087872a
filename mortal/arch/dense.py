"""Fully connected layers and the permutation-invariant MLP the FF paper compares against."""

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


class Dense(nn.Module):
    """Linear map followed by an activation: one hidden layer, usable by any learning rule.

    init="fan_out" draws weights from N(0, 1/d_out), the FF papers' choice; "default" keeps
    PyTorch's uniform fan-in init.
    """

    def __init__(self, d_in: int, d_out: int, act: str = "relu", init: str = "default") -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.act = ACTIVATIONS[act]
        if init == "fan_out":
            nn.init.normal_(self.linear.weight, 0.0, d_out**-0.5)
            nn.init.zeros_(self.linear.bias)
        elif init != "default":
            raise ValueError(f"unknown init {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
