"""Locally connected layers: convolution's receptive fields without its weight sharing.

Every output position has its own filter bank, as in the FF paper's "local receptive fields
without weight-sharing" and its CIFAR-10 nets. The layer runs as one gather and one batched
matmul over positions (no Python loop over positions):

  x (N, H*W*C) --transpose, gather--> patches (L, C*k*k, N) --bmm over L with the transposed
  weight (L, O, C*k*k)--> (L, O, N) --> (N, oh, ow, O), with L = oh * ow positions.

Activities are channels-last (N, H, W, C), so a layer's output is the next one's input without
a transpose; a single-channel image is the same in either layout. The gather indices (what
unfold would pick) are computed once at construction.

Any learning rule can train it: it maps a tensor to a tensor like `Dense`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mortal.arch.dense import ACTIVATIONS


def out_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Positions along one axis: floor((size + 2 * padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


class LocallyConnected2d(nn.Module):
    """Channels-last (N, H, W, C) or flat (N, H*W*C) -> activation of (N, oh, ow, O), one
    filter bank per output position; `in_shape` is given as (C, H, W).

    init="fan_out" draws weights from N(0, 1/O) like `Dense`; "default" is uniform in
    +-1/sqrt(fan_in), PyTorch's convolution default."""

    def __init__(self, in_shape: tuple[int, int, int], out_channels: int, kernel: int,
                 stride: int = 1, padding: int = 0, act: str = "relu", init: str = "default"
                 ) -> None:
        super().__init__()
        c, h, w = in_shape
        self.in_shape = (c, h, w)
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.out_hw = (out_size(h, kernel, stride, padding), out_size(w, kernel, stride, padding))
        if min(self.out_hw) < 1:
            raise ValueError(f"kernel {kernel} with stride {stride} does not fit {in_shape}")
        positions, fan_in = self.out_hw[0] * self.out_hw[1], c * kernel * kernel
        self.weight = nn.Parameter(torch.empty(positions, fan_in, out_channels))
        self.bias = nn.Parameter(torch.zeros(positions, out_channels))
        if init == "fan_out":
            nn.init.normal_(self.weight, 0.0, out_channels**-0.5)
        elif init == "default":
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            raise ValueError(f"unknown init {init!r}")
        self.act = ACTIVATIONS[act]
        # Which flat (H, W, C) input element each patch entry reads; with padding, indices
        # are shifted by one and 0 reads a zero column put in front of the input.
        where = torch.arange(1, c * h * w + 1, dtype=torch.float64).view(1, h, w, c)
        where = F.unfold(where.permute(0, 3, 1, 2), kernel, padding=padding, stride=stride)
        index = where[0].t().round().long() - (0 if padding else 1)
        self.register_buffer("index", index.contiguous(), persistent=False)  # L, Ckk

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """(oh, ow, O) of one example's output."""
        return (*self.out_hw, self.weight.shape[2])

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activation (N, L, O), without the activation."""
        n = x.shape[0]
        x = x.reshape(n, -1)
        if self.padding:  # column 0 becomes the zero that padded entries read
            x = F.pad(x, (1, 0))
        idx = self.index
        positions, k = idx.shape
        # Gather from the transposed input: each patch entry copies one contiguous row of N
        # values (several times faster on a CPU than gathering scattered single elements).
        patches = x.t().contiguous().index_select(0, idx.reshape(-1)).view(positions, k, n)
        out = torch.baddbmm(self.bias[:, :, None], self.weight.transpose(1, 2), patches)
        return out.permute(2, 0, 1)                                               # N, L, O

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return self.act(self.linear(x)).reshape(n, *self.out_shape)

    @torch.no_grad()
    def dense_equivalent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (in_features, out_features) weight and bias of the dense layer computing the same
        map on flat channels-last inputs: zeros outside each receptive field (for tests)."""
        d_in = math.prod(self.in_shape)
        bias = self.bias.reshape(-1)
        eye = torch.eye(d_in, dtype=self.weight.dtype, device=self.weight.device)
        return self.linear(eye).reshape(d_in, -1) - bias, bias


def local_stack(in_shape: tuple[int, int, int],
                layers: tuple[tuple[int, int, int], ...] | list[tuple[int, int, int]],
                act: str = "relu", init: str = "default", padding: int = 0) -> nn.ModuleList:
    """Locally connected layers from (out_channels, kernel, stride) triples, each fed the shape
    the one below produces; `padding` zeros around every layer's input."""
    out, shape = [], in_shape
    for channels, kernel, stride in layers:
        layer = LocallyConnected2d(shape, channels, kernel, stride, padding, act=act, init=init)
        out.append(layer)
        oh, ow, o = layer.out_shape
        shape = (o, oh, ow)
    return nn.ModuleList(out)
