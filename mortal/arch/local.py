"""Locally connected layers: convolution's receptive fields without its weight sharing.

Every output position has its own filter bank, as in the FF paper's "local receptive fields
without weight-sharing" and its CIFAR-10 nets. Two implementations, same map (tests check both
against a masked dense layer), neither a Python loop over positions:

* impl="gather" (default): one gather and one batched matmul over positions,

    x (N, H*W*C) --transpose, gather--> patches (L, C*k*k, N) --bmm over L with the transposed
    weight (L, O, C*k*k)--> (L, O, N) --> (N, oh, ow, O), with L = oh * ow positions.

  The patches are k*k times the input; with few outputs per position (thin matmuls) the gather
  and its memory traffic dominate.

* impl="band": output row i, columns g*bw..g*bw+bw-1 (a block of `band_width` positions) reads
  a k x span window of the padded input (span = (bw-1)*stride + k columns). The block's weights
  are laid out as one dense (bw*O, k*span*C) matrix with zeros outside each position's field,
  so a block is one well-shaped matmul on an overlapping strided view of the input (no patch
  copy): (span/k)x the useful FLOPs (1.6x for 11x11 fields, bw=8) but far less memory traffic.
  Forward and weight/input gradients are written out (`_BandLocal`). `BandGeometry` also
  has feature-major passes on blocks of several rows, for hand-written training loops
  (mortal.rules.ff_maps).

Activities are channels-last (N, H, W, C), so a layer's output is the next one's input without
a transpose; a single-channel image is the same in either layout. Index tables are computed
once per input channel count. `partial` computes the contribution of a subset of the input
channels (the recurrent CIFAR-10 net reuses layer 1's bottom-up part across iterations).

Any learning rule can train it: it maps a tensor to a tensor like `Dense`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mortal.arch.dense import ACTIVATIONS, compute_dtype


def out_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Positions along one axis: floor((size + 2 * padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class BandGeometry:
    """Where the banded implementation reads and writes, for one input channel count: blocks
    of `rows` x bw output positions (G column blocks of bw positions, `row_blocks` of `rows`
    output rows), each reading a `height` x `span` window of the padded input. The autograd
    path (`_BandLocal`) uses rows = 1; the feature-major passes take any."""

    c: int
    h: int
    w: int
    k: int
    s: int
    p: int
    oh: int
    ow: int
    o: int
    bw: int
    rows: int = 1

    @property
    def groups(self) -> int:
        """Column blocks per output row."""
        return -(-self.ow // self.bw)

    @property
    def row_blocks(self) -> int:
        """Blocks of `rows` output rows."""
        return -(-self.oh // self.rows)

    @property
    def span(self) -> int:
        """Padded input columns one block reads."""
        return (self.bw - 1) * self.s + self.k

    @property
    def height(self) -> int:
        """Padded input rows one block reads."""
        return (self.rows - 1) * self.s + self.k

    @property
    def padded(self) -> tuple[int, int]:
        """(rows, columns) of the zero-padded input, big enough for every block."""
        return (max(self.h + 2 * self.p, (self.row_blocks * self.rows - 1) * self.s + self.k),
                max(self.w + 2 * self.p, (self.groups * self.bw - 1) * self.s + self.k))

    @property
    def block_padding(self) -> tuple[int, int]:
        """(rows, columns) of output positions added to make whole blocks."""
        return self.row_blocks * self.rows - self.oh, self.groups * self.bw - self.ow

    @property
    def fan(self) -> int:
        """K of a block's matmul: height rows x span columns x C channels."""
        return self.height * self.span * self.c

    def block_view(self, blocks: torch.Tensor) -> torch.Tensor:
        """The entries of (G, row_blocks, rows*bw*O, K) blocks (any strides) that hold real
        weights, as a (G, row_blocks, rows, bw, O, C, k, k) view: position (b*rows + ri,
        g*bw + jl), output o, input (c, di, dj) sits at row (ri*bw + jl)*O + o, column
        ((ri*s + di)*span + jl*s + dj)*C + c of block (g, b)."""
        sg, sb, sr, sk = blocks.stride()
        c, k, s = self.c, self.k, self.s
        return blocks.as_strided(
            (self.groups, self.row_blocks, self.rows, self.bw, self.o, c, k, k),
            (sg, sb, self.bw * self.o * sr + s * self.span * c * sk, self.o * sr + s * c * sk,
             sr, sk, self.span * c * sk, c * sk), blocks.storage_offset())

    def weight_view(self, weight: torch.Tensor) -> torch.Tensor:
        """An (L, C*k*k, O) weight (or a channel slice of one) as (G, row_blocks, rows, bw,
        O, C, k, k), zero-padded to whole blocks."""
        w = weight.unflatten(1, (self.c, self.k, self.k)).unflatten(0, (self.oh, self.ow))
        pad_r, pad_c = self.block_padding
        if pad_r or pad_c:
            w = F.pad(w, (0, 0, 0, 0, 0, 0, 0, 0, 0, pad_c, 0, pad_r))
        w = w.unflatten(1, (self.groups, self.bw)).unflatten(0, (self.row_blocks, self.rows))
        # (RB, R, G, bw, C, k, k, O) -> (G, RB, R, bw, O, C, k, k)
        return w.permute(2, 0, 1, 3, 7, 4, 5, 6)

    def blocks(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The dense (G, row_blocks, rows*bw*O, K) block matrices of `weight`, zeros outside
        the fields."""
        out = weight.new_zeros(self.groups, self.row_blocks, self.rows * self.bw * self.o,
                               self.fan, dtype=dtype)
        self.block_view(out).copy_(self.weight_view(weight))
        return out

    def weights_of(self, blocks: torch.Tensor) -> torch.Tensor:
        """The (L, C*k*k, O) weights held in (G, row_blocks, rows*bw*O, K) blocks (any
        strides): the inverse of `blocks`, and how a block-shaped gradient becomes the
        weight's."""
        w = self.block_view(blocks).permute(1, 2, 0, 3, 5, 6, 7, 4)  # RB, R, G, bw, C, k, k, O
        w = w.reshape(self.row_blocks * self.rows, self.groups * self.bw, -1, self.o)
        return w[: self.oh, : self.ow].reshape(self.oh * self.ow, -1, self.o)

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) input -> (G, rows*span*C, N): each block column's padded input."""
        hp, wp = self.padded
        n = x.shape[0]
        xp = x.new_zeros(hp, wp, self.c, n)
        xt = x.reshape(n, -1).t().view(self.h, self.w, self.c, n)
        xp[self.p : self.p + self.h, self.p : self.p + self.w] = xt
        if self.groups == 1 and self.span == wp:  # one block reads every column: no copy
            return xp.view(1, -1, n)
        step = self.bw * self.s
        return torch.stack([xp[:, g * step : g * step + self.span]
                            for g in range(self.groups)]).view(self.groups, -1, n)

    # Feature-major passes, for hand-written training loops that keep every iteration's input
    # (mortal.rules.ff_maps): maps are (H*W*C, n) matrices, channels-last within a column, and
    # a layer's input lives in a buffer of `slots` inputs (one per iteration), so the weight
    # gradient of all iterations is one matmul per block on (K, slots * n) windows.

    def buffer(self, slots: int, n: int, dtype: torch.dtype, device: torch.device
               ) -> torch.Tensor:
        """Zeros (G, padded rows, span, C, slots, n): each column block's zero-padded input,
        `slots` inputs of n columns. `write` fills the interior; the border stays zero."""
        return torch.zeros(self.groups, self.padded[0], self.span, self.c, slots, n,
                           dtype=dtype, device=device)

    def write(self, buf: torch.Tensor, x: torch.Tensor, first: int, slot: int) -> None:
        """Put the feature-major map x (H*W*cx, n) into channels first..first+cx-1 of input
        `slot` of every column block that reads it."""
        cx = x.shape[0] // (self.h * self.w)
        xm = x.view(self.h, self.w, cx, x.shape[1])
        for g in range(self.groups):
            start = g * self.bw * self.s - self.p  # the map column of the block's first column
            lo, hi = max(0, start), min(self.w, start + self.span)
            if lo < hi:
                buf[g, self.p : self.p + self.h, lo - start : hi - start, first : first + cx,
                    slot] = xm[:, lo:hi]

    def windows(self, buf: torch.Tensor, g: int, slot: int | None = None) -> torch.Tensor:
        """Column block g's inputs, one per row block, as a (row_blocks, K, n) view of one
        slot, or (row_blocks, K, slots * n) of all of them (slot None): overlapping, no copy."""
        slots, n = buf.shape[4], buf.shape[5]
        off = buf.storage_offset() + g * buf.stride(0)
        step = self.rows * self.s * buf.stride(1)
        if slot is None:
            return buf.as_strided((self.row_blocks, self.fan, slots * n), (step, slots * n, 1),
                                  off)
        return buf.as_strided((self.row_blocks, self.fan, n), (step, slots * n, 1),
                              off + slot * n)

    def to_blocks(self, z: torch.Tensor) -> torch.Tensor:
        """A feature-major (oh*ow*O, m) output as (G, row_blocks, rows*bw*O, m), zero-padded
        to whole blocks (a copy)."""
        m = z.shape[1]
        z = z.view(self.oh, self.ow, self.o, m)
        pad_r, pad_c = self.block_padding
        if pad_r or pad_c:
            z = F.pad(z, (0, 0, 0, 0, 0, pad_c, 0, pad_r))
        z = z.view(self.row_blocks, self.rows, self.groups, self.bw, self.o, m)
        return z.permute(2, 0, 1, 3, 4, 5).reshape(self.groups, self.row_blocks, -1, m)

    def from_blocks(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_blocks`: (G, row_blocks, rows*bw*O, m) -> (oh*ow*O, m)."""
        m = z.shape[-1]
        z = z.view(self.groups, self.row_blocks, self.rows, self.bw, self.o, m)
        z = z.permute(1, 2, 0, 3, 4, 5).reshape(self.row_blocks * self.rows,
                                                 self.groups * self.bw, self.o, m)
        return z[: self.oh, : self.ow].reshape(-1, m)

    def forward_fm(self, blocks: torch.Tensor, buf: torch.Tensor, slot: int) -> torch.Tensor:
        """(oh*ow*O, n) pre-activation, without bias, of input `slot`: one batched matmul per
        column block, in the buffer's dtype (the blocks' must match)."""
        n = buf.shape[5]
        out = buf.new_empty(self.groups, self.row_blocks, self.rows * self.bw * self.o, n)
        for g in range(self.groups):  # bmm reads the overlapping windows in place
            torch.bmm(blocks[g], self.windows(buf, g, slot), out=out[g])
        if self.groups == 1 and self.rows == 1 and self.bw == self.ow:
            return out.view(-1, n)  # already in map order
        return self.from_blocks(out)

    def weight_grad_fm(self, buf: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
        """(L, C*k*k, O) gradient of the weights (this geometry's channels) from the output
        gradients dz (oh*ow*O, slots * n) of every slot in the buffer: one batched matmul per
        column block with K = slots * n, then one extraction."""
        d = self.to_blocks(dz.to(buf.dtype))
        gw = buf.new_empty(self.groups, self.row_blocks, self.fan, d.shape[2])
        for g in range(self.groups):
            torch.bmm(self.windows(buf, g), d[g].transpose(1, 2), out=gw[g])
        return self.weights_of(gw.transpose(2, 3))

    def band(self, cols: torch.Tensor, g: int) -> torch.Tensor:
        """(oh, K, N) overlapping view: output row i's input window in block column g."""
        n = cols.shape[2]
        return cols[g].as_strided((self.oh, self.fan, n), (self.s * self.span * self.c * n, n, 1),
                                  cols[g].storage_offset())


class _BandLocal(torch.autograd.Function):
    """Banded locally connected map (N, H, W, C) -> (N, L, O) pre-activation, bias optional."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # noqa: D102
                geo: BandGeometry, blocks: torch.Tensor | None = None) -> torch.Tensor:
        dt = compute_dtype(x, weight)
        n = x.shape[0]
        cols = geo.columns(x.to(dt))
        if blocks is None:
            blocks = geo.blocks(weight, dt)
        out = cols.new_empty(geo.groups, geo.oh, geo.bw * geo.o, n)
        b = None
        if bias is not None:  # (L, O) -> (G, oh, bw*O, 1), zero-padded to whole blocks
            b = F.pad(bias.to(dt).view(geo.oh, geo.ow, geo.o),
                      (0, 0, 0, geo.groups * geo.bw - geo.ow))
            b = b.view(geo.oh, geo.groups, geo.bw * geo.o, 1).transpose(0, 1)
        with torch.autocast(x.device.type, enabled=False):
            for g in range(geo.groups):  # one matmul per block: bmm would copy the windows
                band = geo.band(cols, g)
                for i in range(geo.oh):
                    if b is None:
                        torch.mm(blocks[g, i], band[i], out=out[g, i])
                    else:
                        torch.addmm(b[g, i], blocks[g, i], band[i], out=out[g, i])
        ctx.save_for_backward(cols, blocks)
        ctx.geo, ctx.dtypes, ctx.has_bias = geo, (x.dtype, weight.dtype), bias is not None
        out = out.view(geo.groups, geo.oh, geo.bw, geo.o, n).permute(4, 1, 0, 2, 3)
        return out.reshape(n, geo.oh, geo.groups * geo.bw, geo.o)[:, :, : geo.ow] \
            .reshape(n, geo.oh * geo.ow, geo.o)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        cols, blocks = ctx.saved_tensors
        geo: BandGeometry = ctx.geo
        n, dt = cols.shape[2], cols.dtype
        go = grad.to(dt).reshape(n, geo.oh, geo.ow, geo.o)
        if geo.groups * geo.bw > geo.ow:
            go = F.pad(go, (0, 0, 0, geo.groups * geo.bw - geo.ow))
        go = go.view(n, geo.oh, geo.groups, geo.bw * geo.o).permute(2, 1, 3, 0).contiguous()
        grad_w = grad_b = grad_x = None
        with torch.autocast(cols.device.type, enabled=False):
            if ctx.needs_input_grad[1]:
                # (window x grad^T): the overlapping window view stays untransposed (a
                # transposed one would be copied), the small output gradient is transposed
                gw = blocks.new_empty(geo.groups, geo.oh, geo.fan, geo.bw * geo.o)
                for g in range(geo.groups):
                    band = geo.band(cols, g)
                    for i in range(geo.oh):
                        torch.mm(band[i], go[g, i].t(), out=gw[g, i])
                grad_w = geo.weights_of(gw.transpose(2, 3)).to(ctx.dtypes[1])
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = go.to(torch.promote_types(dt, torch.float32)).sum(3)
                gb = gb.view(geo.groups, geo.oh, geo.bw, geo.o)
                grad_b = gb.permute(1, 0, 2, 3).reshape(geo.oh, -1, geo.o)[:, : geo.ow]
                grad_b = grad_b.reshape(-1, geo.o).to(ctx.dtypes[1])
            if ctx.needs_input_grad[0]:
                grad_x = _band_input_grad(go, blocks, geo).to(ctx.dtypes[0])
        return grad_x, grad_w, grad_b, None, None


def _band_input_grad(go: torch.Tensor, blocks: torch.Tensor, geo: BandGeometry
                     ) -> torch.Tensor:
    """d loss / d input (N, H, W, C) from the blocks' output gradients (G, oh, bw*O, N),
    overlapping windows summed in float32."""
    hp, wp = geo.padded
    n, row = go.shape[3], geo.span * geo.c
    xp = go.new_zeros(hp, wp, geo.c, n, dtype=torch.promote_types(go.dtype, torch.float32))
    step = geo.bw * geo.s
    for g in range(geo.groups):
        windows = torch.bmm(blocks[g].transpose(1, 2), go[g]).view(geo.oh, geo.k, row, n)
        acc = xp.new_zeros(hp, row, n)
        for di in range(geo.k):
            acc[di : di + (geo.oh - 1) * geo.s + 1 : geo.s] += windows[:, di]
        xp[:, g * step : g * step + geo.span] += acc.view(hp, geo.span, geo.c, n)
    return xp[geo.p : geo.p + geo.h, geo.p : geo.p + geo.w].permute(3, 0, 1, 2)


class LocallyConnected2d(nn.Module):
    """Channels-last (N, H, W, C) or flat (N, H*W*C) -> activation of (N, oh, ow, O), one
    filter bank per output position; `in_shape` is given as (C, H, W).

    init="fan_out" draws weights from N(0, 1/O) like `Dense`; "default" is uniform in
    +-1/sqrt(fan_in), PyTorch's convolution default. impl="gather" or "band" (module docstring);
    `band_width` output columns per block for "band". Same parameters either way."""

    def __init__(self, in_shape: tuple[int, int, int], out_channels: int, kernel: int,
                 stride: int = 1, padding: int = 0, act: str = "relu", init: str = "default",
                 impl: str = "gather", band_width: int = 8) -> None:
        super().__init__()
        c, h, w = in_shape
        self.in_shape = (c, h, w)
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.out_hw = (out_size(h, kernel, stride, padding), out_size(w, kernel, stride, padding))
        if min(self.out_hw) < 1:
            raise ValueError(f"kernel {kernel} with stride {stride} does not fit {in_shape}")
        if impl not in ("gather", "band") or band_width < 1:
            raise ValueError(f"unknown impl {impl!r} or band_width {band_width} < 1")
        self.impl, self.band_width = impl, band_width
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
        self.register_buffer("index", self._gather_index(c), persistent=False)  # L, Ckk
        self._index: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._blocks: dict | None = None  # band blocks kept inside `frozen` (None: outside)

    def _gather_index(self, c: int) -> torch.Tensor:
        """Which flat (H, W, c) input element each patch entry reads; with padding, indices
        are shifted by one and 0 reads a zero column put in front of the input."""
        _, h, w = self.in_shape
        where = torch.arange(1, c * h * w + 1, dtype=torch.float64).view(1, h, w, c)
        where = F.unfold(where.permute(0, 3, 1, 2), self.kernel, padding=self.padding,
                         stride=self.stride)
        return (where[0].t().round().long() - (0 if self.padding else 1)).contiguous()

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """(oh, ow, O) of one example's output."""
        return (*self.out_hw, self.weight.shape[2])

    def geometry(self, c: int) -> BandGeometry:
        """The banded implementation's layout for an input of `c` channels."""
        _, h, w = self.in_shape
        return BandGeometry(c, h, w, self.kernel, self.stride, self.padding, *self.out_hw,
                            self.weight.shape[2], min(self.band_width, self.out_hw[1]))

    def _gather(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
        """The gather implementation of `partial` / `linear`."""
        n, c = x.shape[0], weight.shape[1] // self.kernel**2
        x = x.reshape(n, -1)
        if self.padding:  # column 0 becomes the zero that padded entries read
            x = F.pad(x, (1, 0))
        if c == self.in_shape[0]:
            idx = self.index
        else:
            key = (c, x.device)
            if key not in self._index:
                self._index[key] = self._gather_index(c).to(x.device)
            idx = self._index[key]
        positions, k = idx.shape
        # Gather from the transposed input: each patch entry copies one contiguous row of N
        # values (several times faster on a CPU than gathering scattered single elements).
        patches = x.t().contiguous().index_select(0, idx.reshape(-1)).view(positions, k, n)
        wt = weight.transpose(1, 2)
        out = torch.bmm(wt, patches) if bias is None else \
            torch.baddbmm(bias[:, :, None], wt, patches)
        return out.permute(2, 0, 1)                                               # N, L, O

    def partial(self, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """(N, L, O) contribution of input channels first..last-1 (x holds only those), no
        bias: the layer's pre-activation is the sum of the parts plus the bias."""
        weight = self.weight[:, first * self.kernel**2 : last * self.kernel**2]
        return self._linear(x, weight, None, last - first)

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                c: int) -> torch.Tensor:
        """Pre-activation of a c-channel input with `weight` (and `bias`, if given)."""
        if self.impl == "gather":
            return self._gather(x, weight, bias)
        _, h, w = self.in_shape
        geo = self.geometry(c)
        blocks = None
        if self._blocks is not None:  # inside `frozen`: build each weight slice's blocks once
            dt = compute_dtype(x, weight)
            key = (weight.data_ptr(), tuple(weight.shape), dt)
            kept = self._blocks.get(key)
            if kept is None or kept[0] != weight._version:
                kept = (weight._version, geo.blocks(weight.detach(), dt))
                self._blocks[key] = kept
            blocks = kept[1]
        return _BandLocal.apply(x.reshape(x.shape[0], h, w, c), weight, bias, geo, blocks)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activation (N, L, O), without the activation."""
        return self._linear(x, self.weight, self.bias, self.in_shape[0])

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
                act: str = "relu", init: str = "default", padding: int = 0,
                impl: str = "gather", band_width: int = 8) -> nn.ModuleList:
    """Locally connected layers from (out_channels, kernel, stride) triples, each fed the shape
    the one below produces; `padding` zeros around every layer's input; `impl` and
    `band_width` as in `LocallyConnected2d`."""
    out, shape = [], in_shape
    for channels, kernel, stride in layers:
        layer = LocallyConnected2d(shape, channels, kernel, stride, padding, act=act, init=init,
                                   impl=impl, band_width=band_width)
        out.append(layer)
        oh, ow, o = layer.out_shape
        shape = (o, oh, ow)
    return nn.ModuleList(out)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """A block of code in which the weights of `module`'s banded locally connected layers do
    not change (an evaluation, or the forward runs of one training step): each layer builds the
    dense blocks of its weights once and reuses them, instead of once per call (a recurrent
    net calls each layer 10 labels x 5 iterations per image when it classifies). An in-place
    change that bumps the weights' version counter is noticed and the blocks rebuilt, but
    fused Adam's step does not bump it: never step an optimiser inside the block."""
    layers = [m for m in module.modules() if isinstance(m, LocallyConnected2d)]
    for m in layers:
        m._blocks = {}
    try:
        yield
    finally:
        for m in layers:
            m._blocks = None
