"""FF on the recurrent locally connected maps (`LocalRecurrentStack`, ff-cifar10's nets) in
hand-written passes: the same maths as `ff_recurrent_mnist.layer_losses` with autograd (the
reference), `goodness_by_iteration` and the neutral-label features, arranged for speed.

* Feature-major: a map is an (H*W*C, N) matrix, so a banded block's matmul writes its output
  rows in place and the next layer reads them without a transpose.
* Every layer's input is kept for every iteration of a step in one buffer
  (`BandGeometry.buffer`), so a layer's weight gradient over all iterations is one matmul per
  block with K = iterations x N, and its block-shaped gradient is turned into the weight's
  once per step (autograd did both once per call: 20 or 30 times per step).
* The image is the same at every iteration and in a positive and its negative run (and in
  all ten runs when classifying), so its contribution to the first map is computed once per
  step on n columns, and its weight gradient once from dz summed over iterations and pairs.
* The elementwise passes are the dense fast path's (`ff_recurrent.update_state`,
  `state_gradient`); autograd only differentiates the loss with respect to the goodness.

`supports` says when this path applies; `tests/test_local.py` checks it against the
reference (losses, every gradient, goodness and features).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from mortal.arch.dense import ACTIVATIONS
from mortal.arch.local import BandGeometry, LocallyConnected2d
from mortal.arch.recurrent import LocalRecurrentStack
from mortal.loop import DTYPES
from mortal.rules import ff, ff_fused
from mortal.rules.ff_recurrent import goodness_loss, norm_cols


def supports(net: torch.nn.Module) -> bool:
    """A LocalRecurrentStack of ReLU maps with stride-1 fields."""
    return type(net) is LocalRecurrentStack and all(
        layer.act is ACTIVATIONS["relu"] and layer.local.stride == 1 for layer in net.layers)


@dataclass
class _Map:
    """One map's weights for a step, in the compute dtype: the image part (first map only),
    the part of the maps below / above (`geo` over the buffer's channels: below first, then
    above at channel `above`), the bias and the label weights (top map only)."""

    geo: BandGeometry | None
    blocks: torch.Tensor | None
    first: int           # the weight's channel where the buffer's channels start
    above: int | None    # the buffer channel of the map above (None: the top map)
    image_geo: BandGeometry | None
    image_blocks: torch.Tensor | None
    bias: torch.Tensor   # (L*O,) fp32
    label: torch.Tensor | None  # (L*O, classes)


def _maps(net: LocalRecurrentStack, c_image: int, dt: torch.dtype, cfg: Any) -> list[_Map]:
    """Each map's weights as blocks for this step, of cfg.block = (rows, columns) output
    positions (default: one row of the layer's band width)."""
    rows, width = getattr(cfg, "block", (1, 0))
    out = []
    depth = len(net.layers)
    for j, layer in enumerate(net.layers):
        local = layer.local
        c_in, kk = local.in_shape[0], local.kernel**2
        first = c_image if j == 0 else 0
        w = local.weight.detach()
        bw = width or local.band_width
        geo = _geometry(local, c_in - first, rows, bw) if c_in > first else None
        image_geo = _geometry(local, c_image, rows, bw) if j == 0 else None
        below = 0 if j == 0 else net.layers[j - 1].local.out_shape[2]
        out.append(_Map(
            geo, geo.blocks(w[:, first * kk :], dt) if geo else None, first,
            below if j + 1 < depth else None,
            image_geo, image_geo.blocks(w[:, : c_image * kk], dt) if image_geo else None,
            local.bias.detach().float().reshape(-1),
            layer.label.weight.detach().to(dt) if layer.label is not None else None))
    return out


def _geometry(local: LocallyConnected2d, c: int, rows: int, width: int) -> BandGeometry:
    """The layer's banded layout for c input channels, in blocks of rows x width positions."""
    geo = local.geometry(c)
    return replace(geo, rows=min(rows, geo.oh), bw=min(width, geo.ow))


def _write_inputs(maps: list[_Map], bufs: list[torch.Tensor | None],
                  normed: list[torch.Tensor], slot: int) -> None:
    """Every map's input for the next iteration: the normalised maps below and above."""
    for j, m in enumerate(maps):
        if m.geo is None:
            continue
        if j > 0:
            m.geo.write(bufs[j], normed[j - 1], 0, slot)
        if m.above is not None:
            m.geo.write(bufs[j], normed[j + 1], m.above, slot)


@dataclass
class _Run:
    """What a run of `reps` label runs on n images sets up once: each map's blocks, the
    label's contribution to the top map (L*O, reps*n), the image in a one-slot buffer and its
    contribution to the first map (L*O, n), each map's state after the bottom-up pass (and
    normalised), repeated per label run, and each map's input buffer of `slots` inputs."""

    maps: list[_Map]
    label_part: torch.Tensor
    image_buf: torch.Tensor
    image_part: torch.Tensor
    states: list[torch.Tensor]
    normed: list[torch.Tensor]
    bufs: list[torch.Tensor | None]
    reps: int
    labels: torch.Tensor  # (C, reps*n): the clamped label vectors as the top map reads them

    def parts(self, j: int, slot: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Map j's pre-activation from input `slot` in the fast path's two parts (za, zb,
        reps): za on every column, zb repeated `reps` times (the image part, on the n
        distinct images; the other maps have no fixed part: one zero column)."""
        m = self.maps[j]
        za = m.geo.forward_fm(m.blocks, self.bufs[j], slot) if m.geo is not None else None
        if m.label is not None:
            za = self.label_part if za is None else za.float() + self.label_part.float()
        if j == 0:
            return za, self.image_part, self.reps
        return za, za.new_zeros(za.shape[0], 1), za.shape[1]


def _begin(net: LocalRecurrentStack, x: torch.Tensor, labels: torch.Tensor, slots: int,
           cfg: Any) -> _Run:
    """Set up a run of the n images x with label vector r (rows of `labels` (R*n, C),
    r-major) clamped on columns r*n .. (r+1)*n; the bottom-up pass (`initial`) runs on the n
    distinct images."""
    dt = DTYPES[cfg.dtype]
    n, dev = len(x), x.device
    maps = _maps(net, x.shape[1] // (net.hw[0] * net.hw[1]), dt, cfg)
    m0 = maps[0]
    image_buf = m0.image_geo.buffer(1, n, dt, dev)
    m0.image_geo.write(image_buf, ff.normalise(x).t().to(dt).contiguous(), 0, 0)
    image_part = m0.image_geo.forward_fm(m0.image_blocks, image_buf, 0)
    states = [torch.relu(image_part.float() + m0.bias[:, None]).to(dt)]
    for m in maps[1:]:  # the maps above and the label add nothing yet
        buf = m.geo.buffer(1, n, dt, dev)
        m.geo.write(buf, norm_cols(states[-1]), 0, 0)
        states.append(torch.relu(m.geo.forward_fm(m.blocks, buf, 0).float()
                                 + m.bias[:, None]).to(dt))
    reps = len(labels) // n
    states = [s.repeat(1, reps) for s in states]
    lab = net.label(labels.float()).t().to(dt).contiguous()
    return _Run(maps, torch.mm(maps[-1].label, lab), image_buf, image_part, states,
                [norm_cols(s) for s in states],
                [m.geo.buffer(slots, reps * n, dt, dev) if m.geo else None for m in maps],
                reps, lab)


def layer_gradients(net: LocalRecurrentStack, x: torch.Tensor, y_pos: torch.Tensor,
                    y_neg: torch.Tensor, cfg: Any, goodness: str = "sumsq",
                    compiled: bool = False) -> list[torch.Tensor]:
    """Set every map's weight, bias and label .grad to the gradient of its FF loss summed
    over `cfg.iterations` iterations (divided by their number), positive runs with labels
    y_pos, negative runs with y_neg, goodness `goodness` (an ff.GOODNESS name of the sum of
    squares); return the losses. `ff_recurrent_mnist.layer_losses` and backward give the same."""
    if goodness not in ("sumsq", "neg_sumsq"):
        raise ValueError(f"the hand-written passes need a sum-of-squares goodness, not "
                         f"{goodness!r}: use impl=reference")
    fn_sign = ff.GOODNESS[goodness][1]
    n, iters, dev = len(x), cfg.iterations, x.device
    labels = F.one_hot(torch.cat([y_pos, y_neg]), net.layers[-1].label.in_features)
    run = _begin(net, x, labels, iters, cfg)
    maps, bufs, states, normed = run.maps, run.bufs, run.states, run.normed
    dt = run.image_part.dtype
    dz_buf = [torch.empty(s.shape[0], iters, 2 * n, dtype=dt, device=dev) for s in states]
    gb = [torch.zeros(s.shape[0], device=dev) for s in states]
    image_dz = torch.zeros(states[0].shape[0], n, device=dev)
    label_dz = torch.zeros(states[-1].shape[0], 2 * n, device=dev)
    totals = [torch.zeros((), device=dev) for _ in maps]
    for t in range(iters):
        _write_inputs(maps, bufs, normed, t)
        new_states, new_normed = [], []
        for j, m in enumerate(maps):
            za, zb, reps = run.parts(j, t)
            h, ss, hn = ff_fused.call("recurrent_update", compiled, za, zb, m.bias, states[j],
                                      net.damping, reps)
            loss, c = goodness_loss(ss, n, h.shape[0], cfg, fn_sign)
            totals[j] = totals[j] + loss
            dz, gbj, pair = ff_fused.call("recurrent_grad", compiled, h, za, zb, m.bias, c,
                                          net.damping, reps, True, j == 0)
            gb[j] += gbj
            dz_buf[j][:, t] = dz
            if j == 0:
                image_dz += pair
            if m.label is not None:
                label_dz += dz.float()
            new_states.append(h)
            new_normed.append(hn)
        states, normed = new_states, new_normed
    for j, (layer, m) in enumerate(zip(net.layers, maps, strict=True)):
        local = layer.local
        kk = local.kernel**2
        grad = torch.empty_like(local.weight)
        if m.geo is not None:
            grad[:, m.first * kk :] = m.geo.weight_grad_fm(bufs[j], dz_buf[j].flatten(1))
        if m.image_geo is not None:
            grad[:, : m.first * kk] = m.image_geo.weight_grad_fm(run.image_buf, image_dz)
        local.weight.grad = grad
        local.bias.grad = gb[j].view_as(local.bias).to(local.bias.dtype)
        if layer.label is not None:
            layer.label.weight.grad = torch.mm(label_dz, run.labels.float().t()).to(
                layer.label.weight.dtype)
    return totals


@torch.no_grad()
def runs(net: LocalRecurrentStack, x: torch.Tensor, labels: torch.Tensor, cfg: Any,
         iterations: int, compiled: bool = False
         ) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Run the net on the n images x with each of the R label vectors labels (R, C) clamped
    (columns r*n .. (r+1)*n: label r), the image's part computed once: yields each
    iteration's states (L*O, R*n) and their sums of squares (R*n,), per map."""
    run = _begin(net, x, labels.repeat_interleave(len(x), 0), 1, cfg)
    maps, bufs, states, normed = run.maps, run.bufs, run.states, run.normed
    for _ in range(iterations):
        _write_inputs(maps, bufs, normed, 0)
        out = []
        for j, m in enumerate(maps):
            za, zb, r = run.parts(j, 0)
            out.append(ff_fused.call("recurrent_update", compiled, za, zb, m.bias, states[j],
                                     net.damping, r))
        states = [h for h, _, _ in out]
        normed = [hn for _, _, hn in out]
        yield states, [ss for _, ss, _ in out]


def goodness_by_iteration(net: LocalRecurrentStack, x: torch.Tensor, cfg: Any,
                          iterations: int, n_classes: int = 10, compiled: bool = False
                          ) -> torch.Tensor:
    """(N, n_classes, iterations): for each label clamped in turn, the goodness (sum of
    squares) summed over the maps at each iteration, all labels in one run."""
    out = torch.empty(n_classes, len(x), iterations, device=x.device)
    labels = torch.eye(n_classes, device=x.device)
    for t, (_, ss) in enumerate(runs(net, x, labels, cfg, iterations, compiled)):
        out[:, :, t] = sum(ss).view(n_classes, len(x))
    return out.permute(1, 0, 2)


def mean_states(net: LocalRecurrentStack, x: torch.Tensor, label: torch.Tensor, cfg: Any,
                first: int, last: int, compiled: bool = False) -> list[torch.Tensor]:
    """Each map's state averaged over iterations first..last (1-based) of one run with the
    label vector `label` (C,) clamped, as (n, L*O) fp32 rows."""
    total: list[torch.Tensor] = []
    for t, (states, _) in enumerate(runs(net, x, label[None], cfg, last, compiled)):
        if t + 1 >= first:
            total = [s.float() for s in states] if not total else \
                [a + s.float() for a, s in zip(total, states, strict=True)]
    return [(a / (last - first + 1)).t() for a in total]
