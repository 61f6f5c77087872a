"""A recurrent stack with bottom-up and top-down connections (FF paper §4: a static image
treated as a video of identical frames).

The image is clamped below the first hidden layer and a label vector above the last. At each
synchronous iteration every hidden layer l reads the length-normalised states of the layers
below and above it at the previous iteration and moves part of the way to its new activity:

    h_l(t) = damping * h_l(t-1) + (1 - damping) * relu(W_l [norm h_{l-1}(t-1), norm h_{l+1}(t-1)])

(the paper's damping: 0.3 of the old state, 0.7 of the new). The label vector is normalised
like every input and then multiplied by `label_scale` (1: as loud as each layer's other input
units; a one-hot over 10 classes is 10 of the top layer's 10 + width inputs, so the label's
share of that layer's input energy is 10 / (10 + width) at 1). States start from one bottom-up
pass with no top-down input. A learning rule only sees `layers` (tensor -> tensor modules,
one per hidden layer) and the states the stack hands it, so FF trains it like any stack.

Shapes: image x (N, D); label vector y (N, C); states: one (N, width_l) tensor per layer.
`LocalRecurrentStack` is the same recurrence on topographic maps with local receptive fields
(bottom-up and top-down) and no weight sharing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mortal.arch.dense import Dense
from mortal.arch.local import LocallyConnected2d
from mortal.rules.ff import normalise


class RecurrentStack(nn.Module):
    """Hidden layers of `widths` between a D-pixel image and a C-way label vector."""

    def __init__(self, d_in: int, widths: tuple[int, ...] | list[int], n_classes: int = 10,
                 damping: float = 0.3, act: str = "relu", init: str = "fan_out",
                 label_scale: float = 1.0) -> None:
        super().__init__()
        self.label_scale = label_scale
        below = [d_in, *widths[:-1]]
        above = [*widths[1:], n_classes]
        self.widths = list(widths)
        self.damping = damping
        # layer l reads [below_l, above_l]: one matmul per layer per iteration
        self.layers = nn.ModuleList(Dense(b + a, w, act, init)
                                    for b, a, w in zip(below, above, widths, strict=True))

    def initial(self, x: torch.Tensor) -> list[torch.Tensor]:
        """States after one bottom-up pass (top-down inputs are zero)."""
        states, h = [], x
        for layer in self.layers:
            n_above = layer.linear.in_features - h.shape[1]
            inp = torch.cat([normalise(h), h.new_zeros(len(h), n_above)], dim=1)
            h = layer(inp)
            states.append(h)
        return states

    def inputs(self, states: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor
               ) -> list[torch.Tensor]:
        """Each layer's input for the next iteration: [norm(below), norm(above)] at t-1."""
        below = [x, *states[:-1]]
        above = [normalise(s) for s in states[1:]] + [self.label(y)]
        return [torch.cat([normalise(b), a], dim=1) for b, a in zip(below, above, strict=True)]

    def label(self, y: torch.Tensor) -> torch.Tensor:
        """The clamped label vector as the top layer reads it: normalised, times label_scale."""
        return normalise(y) * self.label_scale

    def mix(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """The damped update of one layer's state."""
        return self.damping * old + (1.0 - self.damping) * new

    def step(self, states: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor
             ) -> list[torch.Tensor]:
        """One synchronous iteration of every layer."""
        ins = self.inputs(states, x, y)
        return [self.mix(s, layer(i)) for s, layer, i in zip(states, self.layers, ins,
                                                             strict=True)]

    def run(self, x: torch.Tensor, y: torch.Tensor, iterations: int) -> list[list[torch.Tensor]]:
        """States after each of `iterations` iterations (index 0 is after the first)."""
        states = self.initial(x)
        out = []
        for _ in range(iterations):
            states = self.step(states, x, y)
            out.append(states)
        return out


@dataclass
class SplitInput:
    """A map's input in two parts: `fixed`, the first channels, passed as the same tensor at
    every iteration of a run (the image), and `rest`, the other channels then the label, if
    any (None: all zero); both flat channels-last. The map computes the fixed part's
    contribution once."""

    fixed: torch.Tensor
    rest: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.fixed)


class LocalMap(nn.Module):
    """One hidden map of a `LocalRecurrentStack`: a locally connected layer (zero-padded so the
    map keeps its size) over the stacked channels of the maps below and above, plus, on the
    top map, a dense input from the label vector. Flat (N, H*W*C_in [+ C]) -> (N, H*W*O), or a
    `SplitInput` whose fixed channels' contribution is reused while the tensor, the weights,
    the grad mode and the autocast setting stay the same (autograd then sums its gradients
    over the iterations into one weight-gradient matmul: the same gradient, a tenth of the
    work for 10 iterations)."""

    def __init__(self, in_shape: tuple[int, int, int], channels: int, kernel: int,
                 n_label: int = 0, act: str = "relu", init: str = "default",
                 impl: str = "gather", band_width: int = 8) -> None:
        super().__init__()
        self.local = LocallyConnected2d(in_shape, channels, kernel, 1, kernel // 2,
                                        act=act, init=init, impl=impl, band_width=band_width)
        self.n_map = math.prod(in_shape)
        self.label = nn.Linear(n_label, math.prod(self.local.out_shape), bias=False) \
            if n_label else None
        self.act = self.local.act
        self._fixed: tuple | None = None  # (fixed tensor, key, contribution) of the last one

    def _fixed_part(self, fixed: torch.Tensor, c: int) -> torch.Tensor:
        """(N, L, O) contribution of the c fixed channels, from the cache when still valid."""
        w = self.local.weight
        key = (fixed._version, w._version, torch.is_grad_enabled(),
               torch.is_autocast_enabled(fixed.device.type),
               torch.get_autocast_dtype(fixed.device.type))
        if self._fixed is not None and self._fixed[0] is fixed and self._fixed[1] == key:
            return self._fixed[2]
        out = self.local.partial(fixed, 0, c)
        self._fixed = (fixed, key, out)
        return out

    def forward(self, x: torch.Tensor | SplitInput) -> torch.Tensor:
        if isinstance(x, SplitInput):
            c_in, h, w = self.local.in_shape
            n_rest = self.n_map - x.fixed.shape[1]
            c = x.fixed.shape[1] // (h * w)
            pre = self._fixed_part(x.fixed, c) + self.local.bias
            if n_rest and x.rest is not None:
                pre = pre + self.local.partial(x.rest[:, :n_rest], c, c_in)
            pre = pre.reshape(len(x), -1)
            label = None if x.rest is None else x.rest[:, n_rest:]
        else:
            pre = self.local.linear(x[:, : self.n_map]).reshape(len(x), -1)
            label = x[:, self.n_map :]
        if self.label is not None and label is not None:
            pre = pre + self.label(label)
        return self.act(pre)


class LocalRecurrentStack(RecurrentStack):
    """The recurrent stack on topographic maps (FF paper's CIFAR-10 nets): hidden layer l is an
    H x W map of channels[l] units per location; each unit reads a kernel x kernel window of
    the normalised map below and of the normalised map above (same positions), and the top map
    reads the whole label vector. States are flat channels-last (N, H*W*channels[l])."""

    def __init__(self, in_shape: tuple[int, int, int], channels: tuple[int, ...] | list[int],
                 kernel: int, n_classes: int = 10, damping: float = 0.3, act: str = "relu",
                 init: str = "default", impl: str = "gather", band_width: int = 8,
                 label_scale: float = 1.0) -> None:
        nn.Module.__init__(self)
        self.label_scale = label_scale
        c, h, w = in_shape
        self.hw = (h, w)
        self.widths = [h * w * o for o in channels]
        self.damping = damping
        below = [c, *channels[:-1]]
        above = [*channels[1:], 0]
        self.layers = nn.ModuleList(
            LocalMap((b + a, h, w), o, kernel, n_classes if a == 0 else 0, act, init, impl,
                     band_width)
            for b, a, o in zip(below, above, channels, strict=True))
        self._image_cache: tuple | None = None

    def _map(self, s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A normalised state as an (N, H, W, C) map in `dtype`."""
        return normalise(s).to(dtype).view(len(s), *self.hw, -1)

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised image, flat, as one tensor for as long as x is unchanged: the first
        map's fixed input, whose contribution the map then computes once per run."""
        cached = self._image_cache
        if cached is not None and cached[0] is x and cached[1] == x._version:
            return cached[2]
        out = normalise(x).reshape(len(x), -1)
        self._image_cache = (x, x._version, out)
        return out

    def _input(self, b: torch.Tensor, a: torch.Tensor | None, y: torch.Tensor,
               dtype: torch.dtype, first: bool = False) -> torch.Tensor | SplitInput:
        """One layer's input: the maps below and above stacked as channels, or the map below
        and the normalised label for the top layer; for the first layer, a `SplitInput` with
        the image as its fixed part."""
        if first:
            rest = self._map(a, dtype).flatten(1) if a is not None else self.label(y).to(dtype)
            return SplitInput(self._image(b), rest)
        if a is not None:
            return torch.cat([self._map(b, dtype), self._map(a, dtype)], dim=3).flatten(1)
        return torch.cat([self._map(b, dtype).flatten(1), self.label(y).to(dtype)], dim=1)

    def initial(self, x: torch.Tensor) -> list[torch.Tensor]:
        """States after one bottom-up pass (top-down and label inputs are zero)."""
        states, h = [], x
        for j, layer in enumerate(self.layers):
            if j == 0:  # the image alone: the maps above and the label add nothing yet
                inp = SplitInput(self._image(x), None)
            else:
                n_above = self.widths[j + 1] if j + 1 < len(self.widths) else 0
                zeros = h.new_zeros(len(h), *self.hw, n_above // (self.hw[0] * self.hw[1]))
                inp = torch.cat([self._map(h, h.dtype), zeros], dim=3).flatten(1)
                if layer.label is not None:
                    inp = torch.cat([inp, h.new_zeros(len(h), layer.label.in_features)], dim=1)
            h = layer(inp)
            states.append(h)
        return states

    def inputs(self, states: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor
               ) -> list[torch.Tensor]:
        """Each layer's input for the next iteration, from the states at t-1."""
        dtype = states[0].dtype
        below = [x, *states[:-1]]
        above: list[torch.Tensor | None] = [*states[1:], None]
        return [self._input(b, a, y, dtype, first=j == 0)
                for j, (b, a) in enumerate(zip(below, above, strict=True))]
