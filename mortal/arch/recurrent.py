"""A recurrent stack with bottom-up and top-down connections (FF paper §4: a static image
treated as a video of identical frames).

The image is clamped below the first hidden layer and a label vector above the last. At each
synchronous iteration every hidden layer l reads the length-normalised states of the layers
below and above it at the previous iteration and moves part of the way to its new activity:

    h_l(t) = damping * h_l(t-1) + (1 - damping) * relu(W_l [norm h_{l-1}(t-1), norm h_{l+1}(t-1)])

(the paper's damping: 0.3 of the old state, 0.7 of the new). States start from one bottom-up
pass with no top-down input. A learning rule only sees `layers` (tensor -> tensor modules,
one per hidden layer) and the states the stack hands it, so FF trains it like any stack.

Shapes: image x (N, D); label vector y (N, C); states: one (N, width_l) tensor per layer.
"""

from __future__ import annotations

import torch
from torch import nn

from mortal.arch.dense import Dense
from mortal.rules.ff import normalise


class RecurrentStack(nn.Module):
    """Hidden layers of `widths` between a D-pixel image and a C-way label vector."""

    def __init__(self, d_in: int, widths: tuple[int, ...] | list[int], n_classes: int = 10,
                 damping: float = 0.3, act: str = "relu", init: str = "fan_out") -> None:
        super().__init__()
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
        above = [*states[1:], y]
        return [torch.cat([normalise(b), normalise(a)], dim=1)
                for b, a in zip(below, above, strict=True)]

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
