"""The Forward-Forward algorithm (Hinton 2022), in one file.

Backprop runs a forward pass and then sends derivatives backwards through every layer. FF
replaces that with two forward passes:

* a *positive* pass on real data, and
* a *negative* pass on data the network should reject (e.g. an image with a wrong label).

Each layer has its own objective: its *goodness* (here the sum of squared activities) should be
above a threshold for positive data and below it for negative data. The probability that an
input is positive is the logistic of (goodness - threshold), and each layer minimises the usual
logistic loss of that probability. Before a layer's activity vector is passed to the next layer
it is length-normalised, so the next layer cannot just read the goodness off its length and has
to use the *direction*, i.e. the relative activities. The input of each layer is detached: no
gradient ever crosses a layer boundary, and each layer's optimiser steps on its own.

This file holds the whole rule:
  goodness functions   `sum_squares`, `neg_sum_squares` (+ any callable h -> (N,) tensor)
  the layer loss       `ff_loss` (the paper's threshold) or `pairwise_loss` (positive vs its
                       paired negative), with optional peer normalisation `peer_loss`
  normalisation        `normalise`
  the network          `FFNet`: any stack of tensor -> tensor layers, one optimiser per layer
  the training step    `FFNet.train_step`: pos and neg batches fused into one matmul per layer
  classification       `FFNet.goodness_scores` (one pass per label) and `FFNet.features`
                       (one pass with a neutral label, for a softmax on top)
  hard negatives       `hard_negative_table`: wrong labels the model currently believes
  the loop             `train`: epochs of train_step with checkpoints, metrics and evaluation
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mortal import distributed
from mortal.arch.dense import feature_major_view
from mortal.bench import gemm_gflops
from mortal.data.negatives import (
    embed_label,
    embed_neutral,
    hard_wrong_labels,
    hybrid_images,
    other_indices,
    wrong_labels,
)
from mortal.loop import (
    DTYPE_TAGS,
    DTYPES,
    autocast,
    epoch_order,
    lr_factor,
    make_optimizer,
    resolve_dtype,
    set_lr,
)
from mortal.rules import ff_fused
from mortal.runs import Run, check_finite

# --- goodness ------------------------------------------------------------------------------


class _SumSquares(torch.autograd.Function):
    """Per-example sum of squares, one pass each way: accumulated in fp32, gradient 2 h g' in
    h's own dtype and layout."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(h)
        return row_sum_squares(h)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (h,) = ctx.saved_tensors
        return h * (2.0 * grad).to(h.dtype).view(-1, *[1] * (h.dim() - 1))


def sum_squares(h: torch.Tensor) -> torch.Tensor:
    """Goodness that positive data should make high: the sum of squared activities."""
    return _SumSquares.apply(h)


def neg_sum_squares(h: torch.Tensor) -> torch.Tensor:
    """Goodness that makes positive data *low* in activity: minus the sum of squares."""
    return -sum_squares(h)


def sum_activities(h: torch.Tensor) -> torch.Tensor:
    """Goodness that positive data should make high: the plain sum of activities (the L1 norm
    of non-negative units). Unlike the sum of squares, its gradient does not vanish at zero
    activity, so with a straight-through ReLU a silenced unit still gets pushed back up."""
    return h.flatten(1).sum(1, dtype=torch.float32)


def sum_squares_plus_sum(h: torch.Tensor) -> torch.Tensor:
    """Goodness sum(h^2 + h): the sum of squares' preference for strongly active units (gradient
    2h + 1) without its dead zone at zero activity (gradient 1 there, as for the plain sum)."""
    return sum_squares(h) + sum_activities(h)


# name -> (goodness function, sign of the threshold). The threshold is `threshold` per unit,
# so a layer of n units compares its goodness against n * threshold (the paper code's choice).
GOODNESS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]] = {
    "sumsq": (sum_squares, 1.0),
    "neg_sumsq": (neg_sum_squares, -1.0),
    "sum": (sum_activities, 1.0),
    "sumsq_sum": (sum_squares_plus_sum, 1.0),
}


def row_sum_squares(h: torch.Tensor) -> torch.Tensor:
    """(N,) fp32 sum of squares of each example's activity, one pass in h's memory layout."""
    if feature_major_view(h):  # reduce along the stored rows
        return h.t().to(torch.float32, copy=True).square_().sum(0)
    return torch.linalg.vector_norm(h.flatten(1), dim=1, dtype=torch.float32).square()


def column_mean(h: torch.Tensor) -> torch.Tensor:
    """(units,) fp32 mean activity of each unit over the examples (rows) of h; feature-major
    activities as one matrix-vector product."""
    if feature_major_view(h):
        return torch.mv(h.t(), h.new_ones(len(h))).float() / len(h)
    return h.flatten(1).mean(0, dtype=torch.float32)


def scale_rows(h: torch.Tensor, c: torch.Tensor,
               add: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
    """c[i] * h[i] for every example i, in h's dtype and layout; with add = (v, n), v (units,)
    is added to the first n examples as well (one pass either way)."""
    c = c.to(h.dtype)
    if add is None:
        return h * c.view(-1, *[1] * (h.dim() - 1))
    v, n = add[0].to(h.dtype), add[1]
    if feature_major_view(h):  # work on the stored (units, N) matrix
        ht = h.t()
        out = torch.empty_like(ht)
        torch.addcmul(v[:, None], ht[:, :n], c[None, :n], out=out[:, :n])
        torch.mul(ht[:, n:], c[None, n:], out=out[:, n:])
        return out.t()
    out = h * c.view(-1, *[1] * (h.dim() - 1))
    out[:n] += v.view(h.shape[1:])
    return out


def rms_scale(sum_squares: torch.Tensor, units: int, eps: float = 1e-8) -> torch.Tensor:
    """The factor that scales a vector of `units` values with this sum of squares to
    root-mean-square 1 (`normalise`'s, shared by the fused steps)."""
    return 1.0 / ((sum_squares / units).sqrt() + eps)


def normalise(h: torch.Tensor, eps: float = 1e-8,
              sum_squares: torch.Tensor | None = None) -> torch.Tensor:
    """Scale each example's activity vector to root-mean-square 1 (length sqrt(n)), so the
    next layer sees only its direction: the goodness is hidden from it. `sum_squares`: the
    rows' sums of squares when already known."""
    flat = h.flatten(1)
    ss = row_sum_squares(flat) if sum_squares is None else sum_squares
    scale = rms_scale(ss, flat.shape[1], eps)
    return (flat * scale.to(h.dtype)[:, None]).view_as(h)  # h's dtype and memory layout


def dropout_mask(shape: tuple[int, ...], p: float, g: torch.Generator | None = None
                 ) -> torch.Tensor:
    """A float mask of `shape`: 0 with probability p (to 1/256), else 1/(1-p). Drawn as random
    bytes, eight per 64-bit draw: a tenth of the time of torch.rand on a CPU generator."""
    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, (-(-n // 8),), dtype=torch.int64, generator=g)
    cut = round(p * 256)
    keep = words.view(torch.uint8)[:n].view(shape) >= cut
    return keep.float().mul_(256 / (256 - cut))


def pair_dropout(x: torch.Tensor, n: int, p: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Dropout of rate p on activities x (in place, x's layout kept); with n > 0 the rows n.. are
    the negatives paired with rows ..n and get the same mask as their positive."""
    shape = (n, *x.shape[1:]) if n else x.shape
    keep = dropout_mask(tuple(shape), p, generator).to(device=x.device, dtype=x.dtype)
    if n:
        x[:n].mul_(keep)
        x[n:].mul_(keep)
    else:
        x.mul_(keep)
    return x


def ff_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, threshold: float,
            temperature: float = 1.0) -> torch.Tensor:
    """Logistic loss of p(positive) = sigmoid((goodness - threshold) / temperature), averaged
    over the positive (label 1) and negative (label 0) examples."""
    logit_pos = (g_pos - threshold) / temperature
    logit_neg = (g_neg - threshold) / temperature
    return 0.5 * (F.softplus(-logit_pos).mean() + F.softplus(logit_neg).mean())


def pairwise_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, temperature: float = 1.0
                  ) -> torch.Tensor:
    """Logistic loss on the goodness *difference* of paired positive and negative examples
    (the same image with the right and a wrong label): p = sigmoid((g_pos - g_neg) / T).
    A threshold-free variant (Lee & Song 2023, "SymBa"), offered beside the paper's loss."""
    return F.softplus(-(g_pos - g_neg) / temperature).mean()


def peer_loss(running_mean: torch.Tensor, batch_mean: torch.Tensor,
              momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Peer normalisation: keep each unit's running mean activity near the layer's average, so
    no unit goes silent or dominates. Returns (loss, new running mean); the gradient flows
    through this batch's share of the running mean."""
    new_mean = momentum * running_mean.detach() + (1.0 - momentum) * batch_mean
    return (new_mean - new_mean.mean()).pow(2).mean(), new_mean.detach()


# --- the network -----------------------------------------------------------------------------


@dataclass
class FFRule:
    """The knobs of the rule, independent of the architecture it trains."""

    goodness: str = "sumsq"
    loss: str = "threshold"  # "threshold" (the paper) or "pairwise" (goodness difference)
    threshold: float = 1.0  # per unit: a layer of n units uses n * threshold
    temperature: float = 1.0
    peer_weight: float = 0.0  # 0 disables peer normalisation
    peer_momentum: float = 0.9
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    dtype: str = "auto"  # "auto": bf16 where the matmul unit has it (loop.resolve_dtype)
    # Dropout on the normalised activity each layer passes up (training only); a positive and
    # its paired negative share the mask, so their goodness difference is not made noisier.
    dropout: float = 0.0
    # The fused step for Dense ReLU layers on a CPU (mortal/rules/ff_fused.py): "auto" compiles
    # it with torch.compile for runs of FUSE_MIN_STEPS steps or more (compiling takes 10-30 s),
    # "on" always, "eager" runs its maths uncompiled, "off" never.
    fuse: str = "auto"

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype)


class FFNet(nn.Module):
    """A stack of layers trained by FF. It needs nothing from a layer but `forward(x) -> h`."""

    def __init__(self, layers: Sequence[nn.Module], rule: FFRule) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.rule = rule
        self.goodness, self.sign = GOODNESS[rule.goodness]
        # +1 / -1 when the goodness is (minus) the sum of squares: train_step then computes
        # its gradient by hand in one pass (same values as autograd, less memory traffic)
        self.sign_of_sum_squares = {sum_squares: 1.0, neg_sum_squares: -1.0}.get(self.goodness)
        self.optimizers = [
            make_optimizer(rule.optimizer, layer.parameters(), rule.lr, rule.weight_decay,
                           rule.momentum)
            for layer in self.layers
        ]
        # Running mean activity per unit, for peer normalisation; created lazily (shape of h).
        self.peer_means: list[torch.Tensor | None] = [None] * len(self.layers)
        # Scaling out (mortal.distributed): gradients averaged across data-parallel processes,
        # or this process's block of layers in a pipeline. None: one process trains them all.
        self.grads: distributed.GradAverager | None = None
        self.pipe: distributed.Pipe | None = None
        # Layers that say so get their activities feature-major (transposed views of (D, N)
        # tensors), the layout in which their matmuls run fastest; the rule only transposes the
        # input batch once.
        self.feature_major = all(getattr(layer, "feature_major", False) for layer in self.layers)
        # "off", "eager" (the fused step's maths, not compiled) or "compiled"; `train` sets it
        # from rule.fuse and the run's length.
        self.fuse = {"on": "compiled", "auto": "off"}.get(rule.fuse, rule.fuse)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised input batch; feature-major (and already in the compute dtype: one
        transposing copy) when the layers want it."""
        x = normalise(x)
        if not self.feature_major:
            return x
        dt = DTYPES[self.rule.dtype]
        return torch.empty((x.shape[1], x.shape[0]), dtype=dt, device=x.device).copy_(x.t()).t()

    def owned(self) -> range:
        """The layers this process trains: all of them, or its pipeline stage's block."""
        return range(len(self.layers)) if self.pipe is None else range(self.pipe.lo, self.pipe.hi)

    def _update(self, i: int) -> None:
        """Step layer i's optimiser on its gradients, then let the layer project its weights."""
        self.optimizers[i].step()
        if hasattr(self.layers[i], "constrain_"):  # e.g. a device's conductance levels
            self.layers[i].constrain_()

    def threshold(self, h: torch.Tensor) -> float:
        """The layer's threshold: `threshold` per unit, signed like the goodness."""
        return self.sign * self.rule.threshold * h[0].numel()

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every layer's optimiser."""
        for opt in self.optimizers:
            set_lr(opt, lr)

    @torch.no_grad()
    def _stats(self, g: torch.Tensor, theta: float, loss: torch.Tensor, n: int, phase: str
               ) -> dict[str, torch.Tensor]:
        """A layer's loss and how often it tells positive from negative data."""
        if phase == "pos":
            acc = (g > theta).float().mean()
        elif phase == "neg":
            acc = (g <= theta).float().mean()
        elif self.rule.loss == "pairwise":
            acc = (g[:n] > g[n:]).float().mean()
        else:
            acc = 0.5 * ((g[:n] > theta).float().mean() + (g[n:] <= theta).float().mean())
        return {"loss": loss.detach(), "acc": acc}

    def _dropout(self, x: torch.Tensor, i: int, n: int, phase: str,
                 generator: torch.Generator | None) -> torch.Tensor:
        """Layer i's output as the next layer's input: with rule.dropout, pair-shared dropout."""
        if self.rule.dropout > 0 and i + 1 < len(self.layers):
            return pair_dropout(x, n if phase == "both" else 0, self.rule.dropout, generator)
        return x

    def _fusing(self, layer: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                feature_major: bool | None = None) -> bool:
        """Whether layer's step goes through ff_fused: asked for (`fuse`), one process,
        sum-of-squares goodness, and a layer/optimiser/input the fused step supports
        (`feature_major`: the input's layout, when x is not yet in it)."""
        return (self.fuse != "off" and self.grads is None and self.pipe is None
                and self.sign_of_sum_squares is not None
                and ff_fused.supports(layer, opt, x, feature_major))

    def _objective(self, g: torch.Tensor, pm: torch.Tensor | None, h: torch.Tensor, n: int,
                   phase: str, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's FF loss from its goodness g (N,), and the loss plus the peer term from the
        positive examples' mean activity per unit pm (None: no peer normalisation)."""
        theta = self.threshold(h)
        t = self.rule.temperature
        if phase == "pos":
            loss = F.softplus(-(g - theta) / t).mean()
        elif phase == "neg":
            loss = F.softplus((g - theta) / t).mean()
        elif self.rule.loss == "pairwise":
            loss = pairwise_loss(g[:n], g[n:], t)
        else:
            loss = ff_loss(g[:n], g[n:], theta, t)
        if pm is None:
            return loss, loss
        if self.grads is not None:  # the mean of the global batch, as one process has it
            pm = self.grads.mean(pm)
        prev = self.peer_means[i]
        if prev is None:
            prev = torch.full_like(pm, pm.mean().item())
        peer, self.peer_means[i] = peer_loss(prev, pm, self.rule.peer_momentum)
        return loss, loss + self.rule.peer_weight * peer

    def train_step(self, x_pos: torch.Tensor | None, x_neg: torch.Tensor | None,
                   phase: str = "both", generator: torch.Generator | None = None,
                   label_width: int = 0) -> list[dict[str, torch.Tensor]]:
        """One FF update of every layer on a batch of positive and negative inputs.

        Positive and negative examples go through each layer together (one matmul); each
        layer's loss is backpropagated only into that layer, whose optimiser then steps.
        phase="pos" or "neg" learns from one kind of data only (the positive and negative
        phases separated in time, "sleep"); that needs the threshold loss, whose two halves
        are separate terms.

        Scaled out: with `grads`, each layer's gradient all-reduce runs while the next layer
        computes, and the layer steps once it is done (a layer's update never changes what the
        next layer sees: its input is the activity from before the update). With `pipe`, only
        the stage's layers are trained: later stages receive their input from the previous
        stage (x_pos and x_neg are then None) and all but the last send their output on.
        `generator` draws the dropout masks (when `rule.dropout` > 0). `label_width` k > 0
        promises that x_pos and x_neg differ only in their first k features (a label embedded
        in the same image): the fused step then computes the first layer's image part once
        per pair (ff_fused.first_layer_step; the same maths, fewer FLOPs).
        Returns the stats of the layers trained here."""
        if phase not in ("both", "pos", "neg"):
            raise ValueError(f"phase must be both, pos or neg, not {phase!r}")
        if phase != "both" and self.rule.loss != "threshold":
            raise ValueError("separate positive and negative phases need loss='threshold': the "
                             "pairwise loss compares each positive with its negative")
        stats = []
        start = 0
        if self.pipe is not None and not self.pipe.first:
            x = self.pipe.recv()  # the previous stage's normalised activity, pos and neg rows
            n = len(x) // 2 if phase == "both" else 0
        elif (label_width and phase == "both"
              and self._fusing(self.layers[0], self.optimizers[0], x_pos, feature_major=True)):
            n = len(x_pos)
            h, g, loss, x_next = ff_fused.first_layer_step(self, x_pos, x_neg, label_width,
                                                           self.fuse == "compiled")
            stats.append(self._stats(g, self.threshold(h), loss, n, phase))
            x = self._dropout(x_next, 0, n, phase, generator)
            start = 1
        else:
            inputs = {"both": lambda: torch.cat([x_pos, x_neg]), "pos": lambda: x_pos,
                      "neg": lambda: x_neg}[phase]()
            n = len(x_pos) if phase == "both" else 0
            x = self._input(inputs)
        reducing = None  # (layer, all-reduce handles) of the layer whose gradients are in flight
        for i in self.owned()[start:]:
            layer, opt = self.layers[i], self.optimizers[i]
            x = x.detach()  # no gradient crosses a layer boundary
            if self._fusing(layer, opt, x):  # the same step in fewer passes (ff_fused.py)
                h, g, loss, x_next = ff_fused.layer_step(self, i, x, n, phase,
                                                         self.fuse == "compiled")
                theta = self.threshold(h)
                stats.append(self._stats(g, theta, loss, n, phase))
                x = self._dropout(x_next, i, n, phase, generator)
                continue
            with autocast(x.device, self.rule.dtype):
                h = layer(x)
            opt.zero_grad(set_to_none=True)
            if self.sign_of_sum_squares is not None:
                # Sum-of-squares goodness: the loss is a function of two small summaries of h
                # (its goodness per example, and the positive examples' mean activity per unit
                # for peer normalisation). Their gradients come from autograd on the small
                # tensors; d loss/d h = 2 sign dL/dg h (+ the peer term) is one pass over h.
                with torch.no_grad():
                    ss = row_sum_squares(h)
                g = (self.sign_of_sum_squares * ss).requires_grad_()
                pos_h = None if self.rule.peer_weight <= 0 or phase == "neg" else (
                    h if phase == "pos" else h[:n])
                pm = None if pos_h is None else column_mean(pos_h.detach()).requires_grad_()
                loss, total = self._objective(g, pm, h, n, phase, i)
                leaves = [g] if pm is None else [g, pm]
                grads = torch.autograd.grad(total, leaves)
                c = (2.0 * self.sign_of_sum_squares) * grads[0]
                # the peer term reaches the positive examples' activities
                peer = None if pm is None else (grads[1] / len(pos_h), len(pos_h))
                h.backward(scale_rows(h.detach(), c, peer))
            else:  # any other goodness: autograd through it
                g = self.goodness(h)
                pos_h = None if self.rule.peer_weight <= 0 or phase == "neg" else (
                    h if phase == "pos" else h[:n])
                pm = None if pos_h is None else pos_h.flatten(1).mean(0, dtype=torch.float32)
                loss, total = self._objective(g, pm, h, n, phase, i)
                total.backward()
                ss = None
            theta = self.threshold(h)
            if self.grads is None:
                self._update(i)
            else:  # start this layer's all-reduce; finish the previous layer's and step it
                handles = self.grads.start(layer.parameters())
                if reducing is not None:
                    self.grads.finish(reducing[1])
                    self._update(reducing[0])
                reducing = (i, handles)
            stats.append(self._stats(g, theta, loss, n, phase))
            with torch.no_grad():
                x = self._dropout(normalise(h.detach(), sum_squares=ss), i, n, phase, generator)
        if reducing is not None:
            self.grads.finish(reducing[1])
            self._update(reducing[0])
        if self.pipe is not None and not self.pipe.last:
            self.pipe.send(x)
        return stats

    @torch.no_grad()
    def passes(self, x: torch.Tensor, feature_major: bool | None = None
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(activity, normalised activity) of each layer for input x, in inference mode; the
        normalised one is what the next layer read, so readouts need not normalise again.
        Feature-major when the layers prefer it, unless `feature_major` says otherwise."""
        out = []
        x = normalise(x)
        if self.feature_major if feature_major is None else feature_major:
            x = x.t().contiguous().t()
        with autocast(x.device, self.rule.dtype):
            for layer in self.layers:
                h = layer(x)
                x = normalise(h)
                out.append((h, x))
        return out

    def activities(self, x: torch.Tensor, feature_major: bool | None = None
                   ) -> list[torch.Tensor]:
        """Each layer's (unnormalised) activity for input x, in inference mode."""
        return [h for h, _ in self.passes(x, feature_major)]

    @torch.no_grad()
    def goodness_scores(self, x: torch.Tensor, n_classes: int = 10, skip: int = 1,
                        batch_size: int = 2000) -> torch.Tensor:
        """(N, n_classes) goodness accumulated over layers[skip:], one pass per candidate
        label: the paper's way to classify (the label with the highest goodness wins)."""
        scores = torch.empty(len(x), n_classes, device=x.device)
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            for c in range(n_classes):
                y = torch.full((len(xb),), c, dtype=torch.long, device=x.device)
                acts = self.activities(embed_label(xb, y, n_classes))
                scores[i : i + len(xb), c] = sum(self.goodness(h) for h in acts[skip:])
        return scores

    @torch.no_grad()
    def layer_features(self, x: torch.Tensor, skip: int = 1) -> list[torch.Tensor]:
        """Normalised activities of layers[skip:] for input x, in the layers' preferred layout
        (the per-minibatch input of the online softmax)."""
        return [hn for _, hn in self.passes(x)[skip:]]

    @torch.no_grad()
    def features(self, x: torch.Tensor, n_classes: int = 10, skip: int = 1,
                 batch_size: int = 2000, neutral_label: bool = True) -> torch.Tensor:
        """Normalised activities of layers[skip:] for one pass (with a neutral label when the
        net was trained with labels in its input), one example per row: the input of the
        one-pass softmax classifier (no gradient reaches the FF layers). Computed batch-major,
        so rows are written without a transpose."""
        out = None
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            acts = self.passes(embed_neutral(xb, n_classes) if neutral_label else xb,
                               feature_major=False)[skip:]
            if out is None:
                width = sum(hn[0].numel() for _, hn in acts)
                out = torch.empty(len(x), width, dtype=acts[0][1].dtype, device=x.device)
            col = 0
            for _, hn in acts:
                d = hn[0].numel()
                out[i : i + len(xb), col : col + d] = hn.flatten(1)
                col += d
        return out


# --- classifiers on top ------------------------------------------------------------------


def error_pct(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Percentage of predictions that differ from the labels."""
    return 100.0 * (pred != y).float().mean().item()


def train_softmax(feats: torch.Tensor, y: torch.Tensor, n_classes: int = 10, epochs: int = 20,
                  lr: float = 1e-2, batch_size: int = 1000, weight_decay: float = 0.0,
                  seed: int = 0) -> nn.Linear:
    """A linear softmax classifier on frozen features (mode b), trained with Adam."""
    head = nn.Linear(feats.shape[1], n_classes).to(feats.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = make_optimizer("adam", head.parameters(), lr, weight_decay)
    dtype = "bfloat16" if feats.dtype == torch.bfloat16 else "float32"
    steps = epochs * (len(feats) // batch_size)
    step = 0
    for epoch in range(epochs):
        order = epoch_order(len(feats), seed + 7919, epoch, feats.device)
        for i in range(0, len(feats) - batch_size + 1, batch_size):
            set_lr(opt, lr * lr_factor("cosine", step, steps))
            idx = order[i : i + batch_size]
            with autocast(feats.device, dtype):  # index_select: 3-7x faster than feats[idx]
                logits = head(feats.index_select(0, idx))
            loss = F.cross_entropy(logits.float(), y.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head


@torch.no_grad()
def softmax_logits(head: nn.Linear, feats: torch.Tensor, batch_size: int = 5000,
                   exact: bool = True) -> torch.Tensor:
    """(N, classes) fp32 logits of a trained head, in batches; `exact=False` multiplies in the
    features' dtype (bf16: a tenth of the time, logits rounded to 8 bits: for sampling)."""
    if not exact:
        w, b = head.weight.to(feats.dtype), head.bias.float()
        return torch.cat([torch.mm(feats[i : i + batch_size], w.t()).float() + b
                          for i in range(0, len(feats), batch_size)])
    return torch.cat([head(feats[i : i + batch_size].float())
                      for i in range(0, len(feats), batch_size)])


def softmax_predict(head: nn.Linear, feats: torch.Tensor) -> torch.Tensor:
    """Class predictions of a trained head."""
    return softmax_logits(head, feats).argmax(1)


# --- the training loop ---------------------------------------------------------------------


@dataclass
class FFTraining:
    """How long and on what: the loop's settings (the rule's are in FFRule)."""

    epochs: int = 60
    batch_size: int = 100
    schedule: str = "cooldown"  # constant for the first half, then linear to zero
    n_classes: int = 10
    label_value: float = 1.0
    hard_negatives_every: int = 0  # epochs between recomputing hard negatives; 0 = uniform
    # Where hard negatives come from: "online" (as Hinton's FF code: every minibatch, one
    # neutral-label pass and a linear softmax trained on it as training goes; the labels it
    # finds likely, now), "softmax" (a table for the whole training set, refreshed every
    # `hard_negatives_every` epochs by a neutral-label pass and a softmax fitted from scratch)
    # or "goodness" (the same table from one pass per label, as the paper classifies).
    hard_negatives_from: str = "softmax"
    online_softmax_lr: float = 0.1  # the online softmax: SGD, gradients smoothed by 0.9
    online_softmax_weight_decay: float = 0.003
    hard_negatives_mix: float = 0.5  # fraction of examples that get a hard (not uniform) label
    eval_every: int = 10  # epochs between test evaluations of mode (a) (and the final one)
    softmax_epochs: int = 20
    softmax_lr: float = 1e-2
    # "wrong_label" (supervised: the image with a wrong label embedded) or "hybrid"
    # (unsupervised: two images mixed through a blurred random mask; no label anywhere)
    negatives: str = "wrong_label"
    blur_steps: int = 6
    image_shape: tuple[int, int, int] = (1, 28, 28)
    softmax_skip: int = 1  # the softmax reads layers[softmax_skip:]
    # "Sleep": 0 learns from positive and negative data at every step; k > 0 alternates k
    # positive-only steps with k negative-only steps.
    sleep_block: int = 0
    # Evaluate (and classify with) an exponential moving average of the layers' weights, with
    # this decay per step; 0 evaluates the weights as trained.
    weight_average: float = 0.0
    # Dropout on the image pixels (not the label) before the label goes in: positive and
    # negative copies of an image share the mask; a hybrid's two images each get their own.
    input_dropout: float = 0.0
    seed: int = 0

    @property
    def supervised(self) -> bool:
        """Whether labels go into the input (and so mode (a) exists)."""
        return self.negatives == "wrong_label"


def hard_negative_table(net: FFNet, x: torch.Tensor, y: torch.Tensor, cfg: FFTraining,
                        g: torch.Generator) -> torch.Tensor:
    """A wrong label for every training example, drawn from the model's own predictions (the
    labels it currently confuses with the truth) for a `hard_negatives_mix` fraction of them,
    uniformly for the rest."""
    if cfg.hard_negatives_from == "goodness":
        scores = net.goodness_scores(x, cfg.n_classes)
    else:
        feats = net.features(x, cfg.n_classes)
        head = train_softmax(feats, y, cfg.n_classes, epochs=2, lr=cfg.softmax_lr, seed=cfg.seed)
        scores = softmax_logits(head, feats, exact=False)
    hard = hard_wrong_labels(scores, y, g)
    uniform = wrong_labels(y, cfg.n_classes, g)
    use_hard = torch.rand(len(y), generator=g).to(y.device) < cfg.hard_negatives_mix
    return torch.where(use_hard, hard, uniform)


class OnlineSoftmax(nn.Module):
    """The label predictor of Hinton's FF code: a linear softmax on the normalised activities
    of layers[skip:] for the image with a neutral label, one SGD step (gradient smoothed by
    momentum 0.9) per minibatch beside the FF layers. Its predictions before the step pick the
    minibatch's hard negative labels; no gradient reaches the FF layers."""

    def __init__(self, widths: Sequence[int], n_classes: int = 10, lr: float = 0.1,
                 weight_decay: float = 0.003) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.zeros(n_classes, w)) for w in widths)
        self.bias = nn.Parameter(torch.zeros(n_classes))
        self.lr = lr
        self.opt = torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9, dampening=0.9,
                                   weight_decay=weight_decay)

    def step(self, feats: Sequence[torch.Tensor], y: torch.Tensor, lr_factor: float = 1.0
             ) -> torch.Tensor:
        """Logits (N, C) of the minibatch's features (N, D_l), then one update towards `y`."""
        dt = feats[0].dtype
        logits = self.bias.detach() + sum(
            torch.mm(w.detach().to(dt), f.flatten(1).t()).float().t()
            for w, f in zip(self.weights, feats, strict=True))
        grad = torch.softmax(logits, 1)  # d cross-entropy / d logits, averaged over the batch
        grad[torch.arange(len(y), device=y.device), y] -= 1.0
        grad /= len(y)
        gt = grad.t().to(dt)
        for w, f in zip(self.weights, feats, strict=True):
            w.grad = torch.mm(gt, f.flatten(1)).float()
        self.bias.grad = grad.sum(0)
        set_lr(self.opt, self.lr * lr_factor)
        self.opt.step()
        return logits


def online_wrong_labels(net: FFNet, head: OnlineSoftmax, x: torch.Tensor, y: torch.Tensor,
                        cfg: FFTraining, g: torch.Generator, lr_factor: float) -> torch.Tensor:
    """Hard negative labels for the minibatch x: drawn from the online softmax's predictions
    for x with a neutral label (true label excluded), for a `hard_negatives_mix` fraction;
    uniform for the rest. The softmax then learns from the minibatch."""
    feats = net.layer_features(embed_neutral(x, cfg.n_classes), cfg.softmax_skip)
    logits = head.step(feats, y, lr_factor)
    hard = hard_wrong_labels(logits, y, g)
    if cfg.hard_negatives_mix >= 1:
        return hard
    uniform = wrong_labels(y, cfg.n_classes, g)
    use_hard = torch.rand(len(y), generator=g).to(y.device) < cfg.hard_negatives_mix
    return torch.where(use_hard, hard, uniform)


def positive_negative(x_train: torch.Tensor, y_train: torch.Tensor, idx: torch.Tensor,
                      cfg: FFTraining, g: torch.Generator,
                      y_neg_table: torch.Tensor | None = None,
                      y_neg: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The positive and negative batch for the examples `idx`. Supervised: the image with its
    true label and with a wrong one (`y_neg`, else from the hard-negative table when there is
    one, else uniform). Unsupervised: the image itself, and a hybrid of two images."""
    x = x_train[idx]
    if cfg.input_dropout > 0:
        x = x * dropout_mask(x.shape, cfg.input_dropout, g).to(x.device)
    if not cfg.supervised:
        other = x_train[other_indices(idx, len(x_train), g)]
        if cfg.input_dropout > 0:  # both halves of a hybrid have holes, as the positive has
            other = other * dropout_mask(other.shape, cfg.input_dropout, g).to(x.device)
        return x, hybrid_images(x, other, cfg.image_shape, cfg.blur_steps, g)
    y = y_train[idx]
    if y_neg is None:
        y_neg = (y_neg_table[idx] if y_neg_table is not None
                 else wrong_labels(y, cfg.n_classes, g))
    return (embed_label(x, y, cfg.n_classes, cfg.label_value),
            embed_label(x, y_neg, cfg.n_classes, cfg.label_value))


def label_width(cfg: FFTraining) -> int:
    """How many leading features of a positive and its negative differ (the embedded label;
    the rest is the same image): n_classes when supervised, else 0 (hybrids differ
    everywhere)."""
    return cfg.n_classes if cfg.supervised else 0


def cooldown_factor(epoch_frac: float) -> float:
    """The FF code's schedule: full rate for the first half of training, then linear to 0."""
    return min(1.0, 2.0 * (1.0 - epoch_frac))


def _hard_negatives_everywhere(net: FFNet, x: torch.Tensor, y: torch.Tensor, cfg: FFTraining,
                               g: torch.Generator) -> torch.Tensor:
    """The hard-negative table, computed once (by rank 0 when distributed) and given to every
    process together with the generator state it leaves behind."""
    table, state = distributed.from_main(
        lambda: (hard_negative_table(net, x, y, cfg, g), g.get_state()))
    g.set_state(state)
    return table


@contextmanager
def averaged_weights(net: FFNet, avg: list[torch.Tensor] | None) -> Iterator[None]:
    """Within the block, the layers hold the averaged weights `avg` (none: unchanged)."""
    if avg is None:
        yield
        return
    params = list(net.layers.parameters())
    live = [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_copy_(params, avg)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, live)


FUSE_MIN_STEPS = 1000  # fuse="auto" compiles the fused step for runs at least this long


def layer_width(layer: nn.Module) -> int:
    """Units in a layer's activity (its output size for one example), by a probe."""
    if hasattr(layer, "linear"):
        return layer.linear.out_features
    if hasattr(layer, "out_shape"):
        return math.prod(layer.out_shape)
    raise ValueError(f"cannot tell the width of {type(layer).__name__}; give it out_shape")


def _warm_up(net: FFNet, x: torch.Tensor, y: torch.Tensor, cfg: FFTraining) -> float:
    """Compile the fused step before the timed training starts: one step of a throw-away copy
    of the net on a batch of the training shape (the real net and every random stream are
    untouched). Returns the seconds it took."""
    t0 = time.perf_counter()
    twin = copy.deepcopy(net)
    g = torch.Generator().manual_seed(12345)
    idx = torch.arange(cfg.batch_size, device=x.device) % len(x)
    x_pos, x_neg = positive_negative(x, y, idx, cfg, g)
    twin.train_step(x_pos, x_neg, generator=g, label_width=label_width(cfg))
    return time.perf_counter() - t0


def _scale_out(net: FFNet) -> None:
    """Under torch.distributed, make `net` a pipeline stage or a data-parallel replica."""
    net.pipe = net.grads = None
    if distributed.pipeline_stages():
        net.pipe = distributed.Pipe(len(net.layers))
    elif distributed.data_parallel():
        net.grads = distributed.GradAverager()


def train(net: FFNet, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
          y_test: torch.Tensor, cfg: FFTraining, run: Run, progress: bool = True) -> dict:
    """Supervised FF: positives carry the true label, negatives a wrong one. Logs per-layer
    loss and pos/neg accuracy each epoch, test error every `eval_every` epochs, checkpoints
    each epoch, and returns the final test errors of both classification modes.

    Under torch.distributed (mortal.distributed) the batches are the same; data-parallel
    processes each train on their slice of every batch, pipeline stages on their layers; rank 0
    evaluates and the epoch's metrics are reduced, so rank 0 logs what one process would."""
    n_layers = len(net.layers)
    steps_per_epoch = len(x_train) // cfg.batch_size
    _scale_out(net)
    if net.rule.fuse == "auto":  # compiling pays off only on long runs
        long = cfg.epochs * steps_per_epoch >= FUSE_MIN_STEPS
        net.fuse = "compiled" if long and x_train.device.type == "cpu" else "off"
    first = net.pipe is None or net.pipe.first  # the stage that makes the input batches
    owned = net.owned()
    start, state = run.resume_state()
    y_neg_table = None
    online = None  # the online softmax that picks hard negatives every minibatch
    if cfg.supervised and cfg.hard_negatives_from == "online":
        if net.pipe is not None:
            raise ValueError("hard_negatives_from=online needs every layer in one process "
                             "(not --pipeline)")
        widths = [layer_width(layer) for layer in net.layers[cfg.softmax_skip :]]
        online = OnlineSoftmax(widths, cfg.n_classes, cfg.online_softmax_lr,
                               cfg.online_softmax_weight_decay).to(x_train.device)
    if state is not None:
        net.load_state_dict(state["net"])
        for opt, s in zip(net.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        net.peer_means = [t if t.numel() else None for t in state["peer_means"]]
        y_neg_table = state.get("y_neg_table")
        if online is not None:
            online.load_state_dict(state["online_softmax"])
            online.opt.load_state_dict(state["online_softmax_opt"])
    avg = None  # the moving average of the layers' weights, when asked for
    if cfg.weight_average:
        if net.pipe is not None:
            raise ValueError("weight_average needs every layer in one process (not --pipeline)")
        avg = (state["avg"] if state is not None and "avg" in state
               else [p.detach().clone() for p in net.layers.parameters()])
    compile_seconds = _warm_up(net, x_train, y_train, cfg) if net.fuse == "compiled" else 0.0
    probes: list[float] = []  # matmul GFLOP/s in the run's dtype, measured at each evaluation
    probe = f"{DTYPE_TAGS[net.rule.dtype]}_gemm_gflops"
    for epoch in range(start, cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        if (cfg.supervised and cfg.hard_negatives_every and epoch > 0 and online is None
                and epoch % cfg.hard_negatives_every == 0):
            with run.timed():
                y_neg_table = _hard_negatives_everywhere(net, x_train, y_train, cfg, g)
        order = epoch_order(len(x_train), cfg.seed, epoch, x_train.device)
        sums = torch.zeros(n_layers, 2)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress or not sys.stderr.isatty(), leave=False)
        with run.timed():
            for i in bar:
                step = epoch * steps_per_epoch + i
                if cfg.schedule == "cooldown":
                    factor = cooldown_factor(step / (cfg.epochs * steps_per_epoch))
                else:
                    factor = lr_factor(cfg.schedule, step, cfg.epochs * steps_per_epoch)
                net.set_lr(net.rule.lr * factor)
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                x_pos = x_neg = y_neg = None
                if online is not None:  # every process: the same labels, the same head
                    y_neg = online_wrong_labels(net, online, x_train[idx], y_train[idx], cfg,
                                                g, factor)
                if first:
                    x_pos, x_neg = positive_negative(x_train, y_train, idx, cfg, g, y_neg_table,
                                                     y_neg)
                if net.grads is not None:  # this process's slice of the global batch
                    x_pos, x_neg = distributed.shard(x_pos), distributed.shard(x_neg)
                phase = ("both" if not cfg.sleep_block else
                         "pos" if (step // cfg.sleep_block) % 2 == 0 else "neg")
                stats = net.train_step(x_pos, x_neg, phase, generator=g,
                                       label_width=label_width(cfg))
                if avg is not None:
                    with torch.no_grad():
                        torch._foreach_lerp_(avg, [p.detach() for p in net.layers.parameters()],
                                             1.0 - cfg.weight_average)
                step_stats = torch.stack([torch.stack([s["loss"], s["acc"]]) for s in stats])
                check_finite({f"layer {j + 1} loss": step_stats[k, 0]
                              for k, j in enumerate(owned)}, step, "the FF network")
                sums[owned.start : owned.stop] += step_stats
                if i % 50 == 0:
                    bar.set_postfix(loss=" ".join(f"{v:.3f}" for v in step_stats[:, 0].tolist()))
        if net.pipe is not None:  # each stage filled its own rows; rank 0 gets the net
            distributed.all_sum(sums)
            distributed.share_layers(net, net.pipe)
        elif net.grads is not None:
            sums = distributed.all_sum(sums) / distributed.world()
        means = sums / steps_per_epoch
        row: dict = {"epoch": epoch + 1, "seconds": round(run.train_seconds, 2)}
        for j in range(n_layers):
            row[f"loss_layer{j + 1}"] = float(means[j, 0])
            row[f"ff_acc_layer{j + 1}"] = float(means[j, 1])
        final = None
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            # how fast this machine's matrix unit is now: shared hosts vary by 2x in minutes
            # (in the run's own dtype: an emulated bf16 matmul would take minutes)
            row[probe] = round(gemm_gflops(2000, 2000, 2000, net.rule.dtype, 0.3,
                                           x_train.device.type), 1)
            probes.append(row[probe])
        with averaged_weights(net, avg):
            if epoch + 1 == cfg.epochs:  # the final evaluation, both modes, logged with the epoch
                final = distributed.from_main(
                    lambda: evaluate(net, x_train, y_train, x_test, y_test, cfg))
                final["compile_seconds"] = round(compile_seconds, 1)
                final[f"{probe}_during_run"] = sorted(probes)[len(probes) // 2]
                if cfg.supervised:
                    row["test_error_pct"] = final["test_error_goodness_pct"]
                row["test_error_softmax_pct"] = final["test_error_softmax_pct"]
            elif (epoch + 1) % cfg.eval_every == 0 and cfg.supervised:
                row["test_error_pct"] = distributed.from_main(lambda: error_pct(
                    net.goodness_scores(x_test, cfg.n_classes).argmax(1), y_test))
            elif (epoch + 1) % cfg.eval_every == 0:  # a quick softmax (2 epochs) to watch
                row["test_error_softmax_pct"] = distributed.from_main(
                    lambda: quick_softmax_error(net, x_train, y_train, x_test, y_test, cfg))
        run.log(**row)
        if progress:
            msg = f"epoch {epoch + 1}/{cfg.epochs}: layer losses " + " ".join(
                f"{float(means[j, 0]):.4f}" for j in range(n_layers))
            if "test_error_pct" in row:
                msg += f"  test error (goodness) {row['test_error_pct']:.2f} %"
            if "test_error_softmax_pct" in row:
                msg += f"  test error (softmax) {row['test_error_softmax_pct']:.2f} %"
            tqdm.write(msg + f"  ({run.train_seconds:.0f} s)")
        run.save(epoch + 1, {
            "net": net.state_dict(),
            "optimizers": [opt.state_dict() for opt in net.optimizers],
            "peer_means": [t if t is not None else torch.empty(0) for t in net.peer_means],
            **({"y_neg_table": y_neg_table} if y_neg_table is not None else {}),
            **({"avg": avg} if avg is not None else {}),
            **({"online_softmax": online.state_dict(),
                "online_softmax_opt": online.opt.state_dict()} if online is not None else {}),
        })
        if final is not None:
            return final
    with averaged_weights(net, avg):
        return distributed.from_main(  # resumed after the last epoch
            lambda: evaluate(net, x_train, y_train, x_test, y_test, cfg))


def quick_softmax_error(net: FFNet, x_train: torch.Tensor, y_train: torch.Tensor,
                        x_test: torch.Tensor, y_test: torch.Tensor, cfg: FFTraining) -> float:
    """Test error of a softmax trained for 2 epochs on unsupervised features: cheap progress."""
    head = train_softmax(net.features(x_train, cfg.n_classes, cfg.softmax_skip,
                                      neutral_label=False), y_train, cfg.n_classes,
                         2, cfg.softmax_lr, seed=cfg.seed)
    pred = softmax_predict(head, net.features(x_test, cfg.n_classes, cfg.softmax_skip,
                                              neutral_label=False))
    return error_pct(pred, y_test)


def evaluate(net: FFNet, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
             y_test: torch.Tensor, cfg: FFTraining) -> dict:
    """Test error of both classification modes: (a) goodness for every label, (b) a softmax on
    the neutral-label features, trained here on the training set with the FF layers frozen."""
    import time

    out = {}
    if cfg.supervised:
        t0 = time.perf_counter()
        pred_a = net.goodness_scores(x_test, cfg.n_classes).argmax(1)
        out["eval_seconds_goodness"] = round(time.perf_counter() - t0, 2)
        out["test_error_goodness_pct"] = error_pct(pred_a, y_test)
    skip = cfg.softmax_skip
    t0 = time.perf_counter()
    head = train_softmax(net.features(x_train, cfg.n_classes, skip,
                                      neutral_label=cfg.supervised),
                         y_train, cfg.n_classes, cfg.softmax_epochs, cfg.softmax_lr,
                         seed=cfg.seed)
    t_head = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred_b = softmax_predict(head, net.features(x_test, cfg.n_classes, skip,
                                                neutral_label=cfg.supervised))
    t_b = time.perf_counter() - t0
    return {
        **out,
        "test_error_softmax_pct": error_pct(pred_b, y_test),
        "eval_seconds_softmax": round(t_b, 2),
        "softmax_train_seconds": round(t_head, 2),
    }
