"""Simulated analog ("mortal") hardware: layers whose every device is slightly different.

A `Device` is made once from a seed ("manufacture") and fixes the imperfections of one layer:
per-weight conductance variation, stuck weights, per-unit activation gain, offset and
saturation. Read noise is drawn afresh on every pass; weights live on a grid of conductance
levels; outputs go through an ADC. One `strength` knob scales every imperfection, and
strength 0 is an exactly ideal layer.

The learner does not see the device: gradients are those of the ideal layer it believes it
has (straight-through), applied to the outputs the device really produced. That is what FF
trained in place needs (a layer sees its input and its measured output) and what backprop "in
the loop" uses (device forward, ideal-model derivatives backward).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from mortal.arch.dense import relu_st


@dataclass(frozen=True)
class Imperfections:
    """The size of each imperfection at strength 1 (a realistic analog crossbar, roughly)."""

    variation: float = 0.10      # std of each weight's multiplicative conductance factor
    read_noise: float = 0.05     # std of additive noise per output, relative to the output RMS
    weight_levels: int = 64      # conductance levels across [-w_max, w_max] (more = finer)
    w_max: float = 4.0           # conductance range, in units of the init std d_out**-0.5
    adc_bits: int = 8            # output quantisation across [-adc_range, adc_range]
    adc_range: float = 8.0
    gain: float = 0.10           # std of each unit's activation gain around 1
    offset: float = 0.05         # std of each unit's activation offset
    saturation: float = 6.0      # typical level where a unit's activation saturates
    stuck: float = 0.01          # fraction of weights stuck at 0 or at +-w_max
    strength: float = 1.0        # multiplies every imperfection; 0 is an ideal layer

    def at(self, strength: float) -> Imperfections:
        """The same device family at another strength."""
        return replace(self, strength=strength)


class _DeviceLinear(torch.autograd.Function):
    """Forward: what the device computes. Backward: the ideal layer's derivatives
    (d out / d W = x, d out / d x = W) at the device's outputs, straight through the noise,
    the ADC and the distorted activation (whose slope the learner does not know)."""

    @staticmethod
    def forward(ctx, x, weight, bias, device_fn, straight_through):  # noqa: D102
        out = device_fn(x)
        ctx.straight_through = straight_through
        ctx.save_for_backward(x, weight, out)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, weight, out = ctx.saved_tensors
        if not ctx.straight_through:  # the ReLU's slope, read off the measured output
            grad = grad * (out > 0)
        g = grad.to(weight.dtype)
        grad_x = (g @ weight).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_w = g.t() @ x.to(g.dtype)
        return grad_x, grad_w, g.sum(0), None, None


class DeviceDense(nn.Module):
    """A dense layer with a ReLU, run on a simulated analog device made from `seed`.

    Same constructor shape and parameters as `mortal.arch.dense.Dense`, so any learning rule
    trains it. Call `constrain_()` after each optimiser step: it moves the weights onto the
    device's conductance levels (stochastic rounding) and re-applies the stuck weights."""

    def __init__(self, d_in: int, d_out: int, imperfections: Imperfections = Imperfections(),
                 seed: int = 0, act: str = "relu", init: str = "fan_out") -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        if init == "fan_out":
            nn.init.normal_(self.linear.weight, 0.0, d_out**-0.5)
            nn.init.zeros_(self.linear.bias)
        self.imp = imperfections
        self.w_max = imperfections.w_max * d_out**-0.5
        self.straight_through = act == "relu_st"
        g = torch.Generator().manual_seed(seed)
        s = imperfections.strength
        # manufacture: fixed per device, not visible to the learner (buffers, not parameters)
        self.register_buffer("conductance", 1.0 + s * imperfections.variation
                             * torch.randn(d_out, d_in, generator=g))
        stuck = torch.rand(d_out, d_in, generator=g) < s * imperfections.stuck
        level = torch.where(torch.rand(d_out, d_in, generator=g) < 0.5, 0.0,
                            self.w_max * torch.sign(torch.randn(d_out, d_in,
                                                                         generator=g)))
        self.register_buffer("stuck_mask", stuck)
        self.register_buffer("stuck_value", level)
        self.register_buffer("gain", 1.0 + s * imperfections.gain * torch.randn(d_out,
                                                                                generator=g))
        self.register_buffer("offset", s * imperfections.offset * torch.randn(d_out,
                                                                              generator=g))
        self.register_buffer("sat", imperfections.saturation
                             * torch.exp(0.25 * torch.randn(d_out, generator=g)))
        # read noise and stochastic rounding draw from the device's own stream, fresh each pass
        self.noise = torch.Generator().manual_seed(seed + 1)

    def get_extra_state(self) -> torch.Tensor:
        """The read-noise stream's position, saved in checkpoints so a resumed run draws the
        same noise as an uninterrupted one."""
        return self.noise.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:  # noqa: D102
        self.noise.set_state(state)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # checkpoints written before the noise state was saved: keep the current stream
        state_dict.setdefault(prefix + "_extra_state", self.noise.get_state())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def ideal(self) -> bool:
        """Whether this device is exactly the ideal layer (strength 0)."""
        return self.imp.strength == 0

    def effective_weight(self) -> torch.Tensor:
        """The conductances the device really applies: weights times variation, stuck ones
        replaced."""
        w = self.linear.weight
        if self.ideal:
            return w
        w = w * self.conductance.to(w.dtype)
        return torch.where(self.stuck_mask, self.stuck_value.to(w.dtype), w)

    def _device(self, x: torch.Tensor) -> torch.Tensor:
        w = self.effective_weight()
        z = F.linear(x, w.to(x.dtype), self.linear.bias.to(x.dtype))
        if self.ideal:
            return torch.relu(z)
        imp, s = self.imp, self.imp.strength
        z = z.float()
        if imp.read_noise:
            rms = z.pow(2).mean().sqrt()
            noise = torch.randn(z.shape, generator=self.noise).to(z.device)
            z = z + s * imp.read_noise * rms * noise
        if imp.adc_bits:
            step = s * 2 * imp.adc_range / 2**imp.adc_bits
            z = torch.round(z.clamp(-imp.adc_range, imp.adc_range) / step) * step
        a = torch.relu(self.gain * z + self.offset)
        sat = self.sat / s
        return (sat * torch.tanh(a / sat)).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ideal:
            z = self.linear(x)
            return z.clamp(min=0) if not self.straight_through else relu_st(z)
        return _DeviceLinear.apply(x, self.linear.weight, self.linear.bias, self._device,
                                   self.straight_through)

    @torch.no_grad()
    def constrain_(self) -> None:
        """After an update: weights onto the conductance grid (stochastic rounding, so small
        updates move a whole level with the right probability), clipped to +-w_max."""
        if self.ideal or not self.imp.weight_levels:
            return
        imp, s = self.imp, self.imp.strength
        step = s * 2 * self.w_max / imp.weight_levels
        w = self.linear.weight.clamp(-self.w_max, self.w_max) / step
        floor = torch.floor(w)
        up = torch.rand(w.shape, generator=self.noise).to(w.device) < (w - floor)
        self.linear.weight.copy_((floor + up.to(w.dtype)) * step)
