"""GLOM (Hinton 2021): columns of embeddings at several levels that settle into islands.

The image is cut into patches ("columns"); each column holds one embedding per level. At every
iteration each level's embedding becomes a weighted average of four terms, then is scaled to
unit length:

  previous   its own value
  bottom-up  a net's prediction from the level below in the same column (level 0: from the
             column's pixels and those of its neighbours)
  top-down   a net's prediction from the level above plus the column's position (a neural
             field: one net everywhere, told where it is); the top level has none
  attention  an average of the same level in the *other* columns, weighted by
             softmax(beta * cosine similarity) over columns within the level's radius (lower
             levels attend more locally); no learned queries, keys or values

The nets are shared across columns. The state is one tensor, e: (B, L, N, D) = (images,
levels, columns, embedding size), so attention over all levels is one batched matmul and
the L-1 bottom-up nets (and the L-1 top-down nets) are batched as one matmul each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GlomSpec:
    """The shape of a GLOM net and its (fixed, not learned) update weights."""

    image: tuple[int, int, int]  # (C, H, W)
    patch: int = 4  # column = patch x patch pixels
    context: int = 1  # bottom-up net of level 0 sees (2 * context + 1)^2 patches
    n_levels: int = 4
    dim: int = 64
    hidden: int = 256
    pos_freqs: int = 4  # the position code: sin/cos of x and y at this many frequencies
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # prev, bu, td, att
    beta: float = 10.0  # attention inverse temperature on cosine similarity
    # the top level's inverse temperature (0 = beta): a sharper top level (with a global
    # radius) lets the columns of one object agree with each other rather than with the
    # whole neighbourhood
    top_beta: float = 0.0
    # the position code's amplitude (1: sin/cos in [-1, 1]); smaller lets the content of the
    # pixels, not where a column is, dominate the state
    pos_scale: float = 1.0
    radius: tuple[float, ...] = (1.5, 3.0, 6.0, 0.0)  # per level, in columns; 0 = global
    # the update reads only the direction of the bottom-up predictions, so their length is
    # free to be a goodness (FF: the length says "real", only the direction is passed on)
    unit_bottom_up: bool = False
    # the bottom-up nets of levels 1.. add their input to their output (x + MLP(x)), so a
    # level starts as a copy of the one below and keeps what it says unless learning changes it
    residual_bottom_up: bool = False

    @property
    def grid(self) -> tuple[int, int]:
        """Columns along (height, width)."""
        return self.image[1] // self.patch, self.image[2] // self.patch

    @property
    def n_columns(self) -> int:
        """Number of columns N."""
        gh, gw = self.grid
        return gh * gw

    def problems(self) -> list[str]:
        """What is wrong with this spec (empty when it is fine)."""
        p = []
        _, h, w = self.image
        if h % self.patch or w % self.patch:
            p.append(f"image {h}x{w} is not a whole number of {self.patch}-pixel patches")
        if len(self.radius) != self.n_levels:
            p.append(f"radius needs one value per level ({self.n_levels}), got {self.radius}")
        if self.n_levels < 2:
            p.append("GLOM needs at least 2 levels")
        if any(w < 0 for w in self.weights) or len(self.weights) != 4 or self.weights[0] + \
                self.weights[1] + self.weights[3] <= 0:
            p.append("weights (prev, bu, td, att) must be 4 values >= 0, not all of prev, bu, "
                     "att zero")
        if self.beta <= 0 or self.dim < 1 or self.hidden < 1:
            p.append("beta, dim and hidden must be positive")
        if self.pos_scale < 0:
            p.append("pos_scale must be >= 0")
        if self.top_beta < 0:
            p.append("top_beta must be >= 0 (0: the top level uses beta)")
        return p


class StackedMLP(nn.Module):
    """K independent two-layer GELU MLPs run as batched matmuls: (K, M, d_in) -> (K, M, d_out).

    With `d_cond` > 0 each also reads a per-column condition (the position code), added to its
    hidden layer as cond @ W_cond, so the condition is never copied across the batch."""

    def __init__(self, k: int, d_in: int, hidden: int, d_out: int, d_cond: int = 0) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(k, d_in, hidden) / math.sqrt(d_in + d_cond))
        self.b1 = nn.Parameter(torch.zeros(k, 1, hidden))
        self.wc = nn.Parameter(torch.randn(k, d_cond, hidden) / math.sqrt(d_in + d_cond)) \
            if d_cond else None
        self.w2 = nn.Parameter(torch.randn(k, hidden, d_out) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(k, 1, d_out))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: (K, B, N, d_in), cond: (N, d_cond) -> (K, B, N, d_out)."""
        k, b, n, d = x.shape
        h = torch.baddbmm(self.b1, x.reshape(k, b * n, d), self.w1).view(k, b, n, -1)
        if self.wc is not None and cond is not None:
            h = h + torch.matmul(cond.to(h.dtype), self.wc.to(h.dtype)).unsqueeze(1)
        h = F.gelu(h).reshape(k, b * n, -1)
        return torch.baddbmm(self.b2, h, self.w2).view(k, b, n, -1)


def position_code(grid: tuple[int, int], n_freqs: int) -> torch.Tensor:
    """(N, 4 * n_freqs) sin and cos of each column's (x, y) in [-1, 1] at frequencies
    pi * 2^f, f < n_freqs: where a column is, for the neural field and level 0."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, gh), torch.linspace(-1, 1, gw), indexing="ij")
    xy = torch.stack([xs.flatten(), ys.flatten()], 1)  # (N, 2)
    f = math.pi * 2.0 ** torch.arange(n_freqs)  # (F,)
    ang = (xy.unsqueeze(2) * f).flatten(1)  # (N, 2F)
    return torch.cat([ang.sin(), ang.cos()], 1)


def column_distances(grid: tuple[int, int]) -> torch.Tensor:
    """(N, N) Euclidean distances between columns, in columns (row-major order)."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    xy = torch.stack([xs.flatten(), ys.flatten()], 1).float()
    return torch.cdist(xy, xy)


def locality_bias(grid: tuple[int, int], radius: tuple[float, ...]) -> torch.Tensor:
    """(L, N, N) additive attention bias: 0 where column j is within `radius[l]` of column i
    (Euclidean, in columns; radius 0 = everywhere), -inf elsewhere and on the diagonal (a
    column attends to the *other* columns)."""
    dist = column_distances(grid)  # (N, N)
    eye = torch.eye(len(dist), dtype=torch.bool)
    out = []
    for r in radius:
        allowed = (dist <= r) if r > 0 else torch.ones_like(eye)
        out.append(torch.zeros_like(dist).masked_fill(~allowed | eye, float("-inf")))
    return torch.stack(out)


def attention_weights(e: torch.Tensor, beta: float | torch.Tensor, bias: torch.Tensor
                      ) -> torch.Tensor:
    """(B, L, N, D) unit embeddings -> (B, L, N, N) weights: row i is softmax over columns j of
    beta * cos(e_i, e_j) + bias[l, i, j]; each row sums to one. `beta` is one number, or an
    (L, 1, 1) tensor: one per level."""
    sim = torch.matmul(e, e.transpose(-1, -2))  # (B, L, N, N)
    if isinstance(beta, torch.Tensor):
        return torch.softmax(torch.addcmul(bias, sim, beta), dim=-1)
    return torch.softmax(torch.add(bias, sim, alpha=beta), dim=-1)  # fp32: one pass, no copy


def consensus(e: torch.Tensor, beta: float | torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(B, L, N, D): each column's attention-weighted average of its level in other columns."""
    w = attention_weights(e, beta, bias)
    return torch.matmul(w.to(e.dtype), e)


def update(e: torch.Tensor, bu: torch.Tensor, td: torch.Tensor, att: torch.Tensor,
           weights: tuple[float, float, float, float]) -> torch.Tensor:
    """One GLOM iteration from its four terms, e, bu, att: (B, L, N, D), td: (B, L-1, N, D)
    (levels 0..L-2): the weighted average per level (the top level has no top-down term, so its
    weights are renormalised without it), scaled to unit length."""
    wp, wb, wt, wa = weights
    num = wp * e.float() + wb * bu.float() + wa * att.float()
    num = torch.cat([num[:, :-1] + wt * td.float(), num[:, -1:]], 1)
    n_levels = e.shape[1]
    denom = torch.full((1, n_levels, 1, 1), wp + wb + wt + wa, device=e.device)
    denom[:, -1] = wp + wb + wa
    return F.normalize(num / denom, dim=-1)


class Glom(nn.Module):
    """The GLOM net: bottom-up and top-down nets shared across columns, plus fixed attention."""

    def __init__(self, spec: GlomSpec) -> None:
        super().__init__()
        problems = spec.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.spec = spec
        c = spec.image[0]
        k = 2 * spec.context + 1
        d_col = c * (k * spec.patch) ** 2
        d_pos = 4 * spec.pos_freqs
        levels, d, h = spec.n_levels, spec.dim, spec.hidden
        self.bottom0 = StackedMLP(1, d_col, h, d, d_cond=d_pos)  # pixels (+ position) -> level 0
        self.bottom = StackedMLP(levels - 1, d, h, d)  # level l-1 -> level l, l = 1..L-1
        self.top = StackedMLP(levels - 1, d, h, d, d_cond=d_pos)  # level l+1, pos -> level l
        self.register_buffer("pos", spec.pos_scale * position_code(spec.grid, spec.pos_freqs),
                             persistent=False)
        self.register_buffer("bias", locality_bias(spec.grid, spec.radius), persistent=False)

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, N, C * (k * patch)^2): each column's pixels with those of
        its neighbours (k = 2 * context + 1 patches a side, zero-padded at the border)."""
        p, c = self.spec.patch, self.spec.context
        cols = F.unfold(x, kernel_size=(2 * c + 1) * p, stride=p, padding=c * p)  # (B, F, N)
        return cols.transpose(1, 2)

    def bottom_up(self, cols: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """(B, N, F) column pixels, (B, L, N, D) state -> (B, L, N, D) bottom-up predictions."""
        b0 = self.bottom0(cols.unsqueeze(0), self.pos)  # (1, B, N, D)
        below = e[:, :-1].transpose(0, 1)
        up = self.bottom(below)  # (L-1, B, N, D) from levels 0..L-2
        if self.spec.residual_bottom_up:
            up = up + below.to(up.dtype)
        return torch.cat([b0, up], 0).transpose(0, 1)

    def top_down(self, e: torch.Tensor) -> torch.Tensor:
        """(B, L, N, D) state -> (B, L-1, N, D) top-down predictions of levels 0..L-2."""
        return self.top(e[:, 1:].transpose(0, 1), self.pos).transpose(0, 1)

    def consensus(self, e: torch.Tensor) -> torch.Tensor:
        """(B, L, N, D) -> (B, L, N, D) attention averages over other columns, per level."""
        return consensus(e, self.betas(), self.bias)

    def betas(self) -> float | torch.Tensor:
        """The attention inverse temperature: spec.beta, or with a top_beta of its own an
        (L, 1, 1) tensor, beta at every level but the top."""
        sp = self.spec
        if not sp.top_beta or sp.top_beta == sp.beta:
            return sp.beta
        b = torch.full((sp.n_levels, 1, 1), sp.beta, device=self.bias.device)
        b[-1] = sp.top_beta
        return b

    def init_state(self, cols: torch.Tensor) -> torch.Tensor:
        """(B, N, F) -> (B, L, N, D): one bottom-up sweep from the pixels, unit length."""
        e = F.normalize(self.bottom0(cols.unsqueeze(0), self.pos)[0].float(), dim=-1)
        levels = [e]
        net = self.bottom
        for lvl in range(self.spec.n_levels - 1):  # level lvl+1 from level lvl, its own net
            x = levels[-1].reshape(-1, self.spec.dim).to(net.w1.dtype)
            h = F.gelu(torch.addmm(net.b1[lvl], x, net.w1[lvl]))
            out = torch.addmm(net.b2[lvl], h, net.w2[lvl])
            if self.spec.residual_bottom_up:
                out = out + x.to(out.dtype)
            out = out.view(e.shape)
            levels.append(F.normalize(out.float(), dim=-1))
        return torch.stack(levels, 1)

    def combine(self, e: torch.Tensor, bu: torch.Tensor, td: torch.Tensor, att: torch.Tensor
                ) -> torch.Tensor:
        """The next state from the four terms (`update`), the bottom-up ones scaled to unit
        length first when spec.unit_bottom_up."""
        if self.spec.unit_bottom_up:
            bu = F.normalize(bu.float(), dim=-1)
        return update(e, bu, td, att, self.spec.weights)

    def step(self, e: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """One iteration of every level (gradients flow unless the caller detaches)."""
        return self.combine(e, self.bottom_up(cols, e), self.top_down(e), self.consensus(e))

    def forward(self, x: torch.Tensor, iterations: int) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, N, D) state after `iterations` iterations."""
        cols = self.columns(x)
        e = self.init_state(cols)
        for _ in range(iterations):
            e = self.step(e, cols)
        return e
