"""Training GLOM (mortal.arch.glom) two ways, and measuring its islands.

mode="local" (the default, the goal): no gradient crosses an iteration or a level. At every
  iteration each bottom-up and top-down net reads the detached state and learns to predict
  the detached attention consensus at its target level (the context teaches the local
  extractor: "mutual distillation"), by InfoNCE against the same column of the other images
  in the batch (same image positive, other images negative), which keeps the consensus from
  collapsing to one vector for every image. The state then moves on with the detached
  predictions. Each net's loss reaches only that net. With views=2 every image is seen twice,
  shifted, and each view's nets predict the other view's consensus instead of their own.
mode="paper": backprop through all iterations of a denoising objective (reconstruct the
  pixels of masked columns from level 0), plus the same InfoNCE regulariser on the live
  (not detached) predictions.
mode="supervised": backprop through all iterations of a cross-entropy on a linear head over
  the top level's mean across columns (the backprop-trained GLOM classifier), or, given one
  label per column, over every labelled column of the top level (as eGLOM is trained).

Measuring: `cluster` (average-linkage agglomerative clustering of a level's columns on cosine
similarity, cut at a threshold), `adjusted_rand_index`, and `level_ari` per level against
ground-truth ids.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mortal import distributed
from mortal.arch.glom import Glom, column_distances, consensus
from mortal.config import ConfigError
from mortal.data.augment import jitter, random_affine
from mortal.data.negatives import hybrid_images, other_indices
from mortal.loop import DTYPES, autocast, lr_factor, make_optimizer, resolve_dtype, set_lr
from mortal.rules import ff as ff_rule
from mortal.runs import Run, check_finite

MODES = ("local", "paper", "supervised")


@dataclass
class GlomRule:
    """How GLOM learns: the mode and its settings."""

    mode: str = "local"
    iterations: int = 6
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    tau: float = 0.1  # InfoNCE temperature
    # also contrast with the same image's columns outside the level's attention window
    far_negatives: bool = False
    # with far_negatives: per level, the same image's columns farther than this (in columns,
    # Euclidean) are the negatives instead of those outside the attention window (empty: the
    # window). Lets a global (radius 0) top level contrast its columns with the far side of
    # the image, where the other object lies, and not with its own object's far columns
    far_radius: tuple[float, ...] = ()
    # local mode: average the losses over the columns with ink in their own patch only (the
    # empty background columns, most of an image, would otherwise dominate the objective)
    ink_only: bool = False
    # local mode: the other images' same column as negatives (False: only the same image's
    # far columns, so same-part columns of different images are not pushed apart)
    image_negatives: bool = True
    # local mode: the top level's bottom-up loss takes the other images' same column as
    # negatives even when image_negatives is off for the levels below: its target must then
    # say *what* is there (the object), not only where the column is
    top_image_negatives: bool = False
    # local mode: 2 = see every image twice, each copy shifted by up to `shift` pixels, and
    # make each view's nets predict the *other* view's consensus (the GLOM paper's agreement
    # between two crops of one image): what agrees must survive the shift, not just the pixels
    views: int = 1
    shift: int = 2
    # local mode, views = 2: also rotate each view by up to `rotate` degrees and zoom it by
    # up to a factor 1 +- `scale` (each image its own draw): what the two views agree on must
    # then survive the small rotations and size changes a digit can take. 0: shifts only
    rotate: float = 0.0
    scale: float = 0.0
    # local mode, views = 2: also roll the second view by a random whole number of columns,
    # up to this many along each axis (one offset per step, wrapping around), and score each
    # view's prediction at a column against the other view's consensus at the column holding
    # the *same content*. Its far negatives are then other content, one of them often at the
    # anchor's own position, so a net that predicts only where a column is loses: position
    # can no longer solve the loss (docs/glom.md, seventh session). 0: views line up
    shift_columns: int = 0
    # local mode, views = 2: hide the pixels of this fraction of columns in each view, drawn
    # independently per view, so a net must predict from context what the other view sees
    # (GLOM's filling-in by top-down and attention). 0: no masking
    view_mask: float = 0.0
    # local mode, one view: weight of an FF term at every level. Each bottom-up net's
    # prediction should be long (high log mean square) for the real images and short for
    # hybrid negatives (each image blended with another through a blurred random mask, as
    # for unsupervised FF), averaged over each image's inked columns and scored as the pairwise
    # logistic loss of an image against its hybrid at `goodness_temperature`. The hybrids
    # hold pieces of real images in wrong arrangements, so telling them apart needs what an
    # object is, which the consensus targets alone do not ask for. Use it with a model whose
    # update reads only the bottom-up direction (GlomSpec.unit_bottom_up). 0: off
    goodness_weight: float = 0.0
    goodness_temperature: float = 1.0
    # local mode: the inverse temperature of the attention that makes the nets' *targets* (0:
    # the model's own). Higher than the dynamics' beta, a column is taught to predict the mean
    # of the neighbours already like it, not of its whole window, so agreement can grow inside
    # an island without smearing it into the next one
    target_beta: float = 0.0
    blur_steps: int = 6  # the hybrids' mask (negatives.blur_mask)
    contrast_weight: float = 0.1  # paper mode: weight of the InfoNCE regulariser
    mask_frac: float = 0.25  # paper mode: fraction of columns whose pixels are hidden
    n_classes: int = 10  # supervised mode
    dtype: str = "auto"  # "auto": bf16 where the matmul unit has it (loop.resolve_dtype)

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype)


def info_nce(pred: torch.Tensor, target: torch.Tensor, tau: float,
             far: torch.Tensor | None = None, offset: int = 0,
             weight: torch.Tensor | None = None, other_images: bool = True,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-level InfoNCE of predictions (b, L, N, D) against targets (B, L, N, D): for column n
    of image i, the positive is target[offset + i, :, n] and the negatives the same column of
    the other images, plus (with `far`, (L, N, N) bool) the same image's columns m with
    far[l, n, m]: those outside the level's attention window. The targets may be a larger batch
    than the predictions (the global batch under data parallel, this process's images starting
    at `offset`). Returns (L,) losses averaged over the predictions' images and columns, or
    with `weight` ((b, N), summing to one over this process's share) their weighted sums.
    With `other_images` False the negatives are only the far columns of the same image.
    `dtype` is the similarity matmuls' input type (bfloat16: half the memory traffic and the
    bf16 units; they accumulate in fp32 and the softmax is fp32 either way)."""
    p = (F.normalize(pred.float(), dim=-1) / tau).to(dtype)  # 1/tau on the small tensor
    t = F.normalize(target.float(), dim=-1).to(dtype)
    b = len(p)
    own = t[offset : offset + b]  # this process's images' targets
    n_levels, n_cols = p.shape[1], p.shape[2]
    if far is None and not other_images:
        raise ValueError("InfoNCE without other images needs far negatives")
    if far is not None:
        # (b, L, N, N) same image, through one additive (L, N, N) bias: -inf inside the
        # window; on the diagonal too when the positive comes from `logits` (other images),
        # else the diagonal is the positive itself
        keep = far if other_images else far | torch.eye(n_cols, dtype=torch.bool,
                                                         device=far.device)
        bias = torch.zeros(far.shape, device=far.device).masked_fill(~keep, -math.inf)
        inside = torch.matmul(p, own.transpose(-1, -2)).float() + bias
    if other_images:
        logits = torch.einsum("blnd,clnd->blnc", p, t).float()  # (b, L, N, B): other images
        labels = torch.arange(offset, offset + b, device=pred.device).view(b, 1, 1)
        if far is not None:
            logits = torch.cat([logits, inside], -1)
    else:
        logits = inside
        labels = torch.arange(n_cols, device=pred.device).view(1, 1, n_cols)
    labels = labels.expand(b, n_levels, n_cols)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                         reduction="none").view(b, n_levels, n_cols)
    if weight is not None:
        return torch.einsum("bln,bn->l", ce, weight)
    return ce.mean((0, 2))


def global_batch(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Under data parallel, the (detached) rows of `t` of every process in rank order, and
    where this process's rows start; `t` and 0 otherwise. InfoNCE takes its negatives from
    the global batch with it, so the loss is the one a single process computes on the whole
    batch. No gradient flows back through the gather (its callers gather only stop-gradient
    targets)."""
    if not distributed.data_parallel():
        return t, 0
    t = t.detach().contiguous()
    parts = [torch.empty_like(t) for _ in range(distributed.world())]
    torch.distributed.all_gather(parts, t)
    return torch.cat(parts), distributed.rank() * len(t)


def attach(model: Glom, rule: GlomRule) -> None:
    """Give the model the rule's local-loss settings, which `local_losses` reads from it
    (tau, far negatives and their radii, which images are negatives)."""
    model.tau = rule.tau
    model.far_negatives = rule.far_negatives
    model.far_radius = tuple(rule.far_radius)
    model.image_negatives = rule.image_negatives
    model.top_image_negatives = rule.top_image_negatives
    model.target_beta = rule.target_beta


def far_mask(model: Glom) -> torch.Tensor:
    """(L, N, N) bool: the same-image negatives of `info_nce`: column pairs outside each
    level's attention window (the diagonal and global levels excluded), or, when the training
    loop set `model.far_radius` (one value per level), pairs farther apart than that."""
    eye = torch.eye(model.bias.shape[-1], dtype=torch.bool, device=model.bias.device)
    radius = tuple(getattr(model, "far_radius", ()) or ())
    if not radius:
        return torch.isinf(model.bias) & ~eye
    if len(radius) != model.spec.n_levels:
        raise ValueError(f"far_radius needs one value per level ({model.spec.n_levels}), "
                         f"got {radius}")
    dist = column_distances(model.spec.grid).to(model.bias.device)
    return torch.stack([dist > r for r in radius]) & ~eye


def inked(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N) float: 1 on the columns with ink (any non-zero pixel) in their
    own patch, 0 elsewhere."""
    return (patches(x, patch).abs().sum(-1) > 0).float()


def ink_weights(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N) loss weights: 1 / count on the columns with ink (any non-zero
    pixel) in their own patch, 0 elsewhere; uniform when no column of the batch has ink. Under
    data parallel the count is the global batch's divided by the process count, so the mean
    over processes of their weighted sums is one process's weighted mean on the whole batch."""
    ink = inked(x, patch)
    count = distributed.all_sum(ink.sum().clone()) / distributed.world()
    if float(count) == 0:
        ink = torch.ones_like(ink)
        count = distributed.all_sum(ink.sum().clone()) / distributed.world()
    return ink / count


def local_losses(model: Glom, cols: torch.Tensor, e: torch.Tensor, dtype: str,
                 weight: torch.Tensor | None = None, views: int = 1,
                 align: torch.Tensor | None = None, scored: int | None = None
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """One local iteration: each net predicts its level from the detached state; returns
    ({"bu": (L,), "td": (L-1,)} losses against the detached consensus, bu, td, consensus),
    averaged over columns, or weighted by `weight` (B, N). Level l's bottom-up loss reaches
    only the bottom-up net of level l, and so on. With `views` = 2 the batch holds two views
    of the same images (first half, second half) and each view's predictions are scored
    against the *other* view's consensus, the negatives coming from that view too. `align`
    (N,): the second view's column that holds the first view's column n (column-rolled views,
    `column_permutation`); the other view's consensus is re-indexed by it (and its inverse)
    so column n's positive is the same content, and far negatives are far in content.
    `scored`: only the batch's first `scored` images are scored (the rest, FF negatives, are
    predicted and returned but are neither targets nor InfoNCE negatives)."""
    e = e.detach()
    with torch.no_grad(), autocast(e.device, dtype):
        att = model.consensus(e).float()
        sharp = float(getattr(model, "target_beta", 0.0))
        # the targets: the same consensus, or one through sharper attention (target_beta)
        goal = consensus(e, sharp, model.bias).float() if sharp else att
    with autocast(e.device, dtype):
        bu = model.bottom_up(cols, e)
        td = model.top_down(e)
    tau, far = model_tau(model), far_mask(model) if model_far(model) else None
    others = bool(getattr(model, "image_negatives", True))
    top_others = bool(getattr(model, "top_image_negatives", False))
    mm = DTYPES[dtype]  # the similarity matmuls in the run's dtype (fp32 softmax either way)
    n = len(e) if scored is None else scored
    parts = [slice(0, n)] if views == 1 else [slice(0, n // 2), slice(n // 2, n)]
    if align is not None and views != 2:
        raise ValueError("align needs views=2")
    order = None if align is None else [align, torch.argsort(align)]  # own column -> other's
    losses = {"bu": 0.0, "td": 0.0}
    for i, own in enumerate(parts):
        target = parts[(i + 1) % len(parts)]  # the view itself, or the other one
        w = None if weight is None else weight[own]
        att_all, off = global_batch(goal[target])  # negatives from every process's images
        if order is not None:  # the other view's columns in this view's order of content
            att_all = att_all[:, :, order[i]]
        if top_others and not others:  # the top level with other images, the rest without
            below = info_nce(bu[own][:, :-1], att_all[:, :-1], tau,
                             None if far is None else far[:-1], off, w, others, mm)
            top = info_nce(bu[own][:, -1:], att_all[:, -1:], tau,
                           None if far is None else far[-1:], off, w, True, mm)
            bu_loss = torch.cat([below, top])
        else:
            bu_loss = info_nce(bu[own], att_all, tau, far, off, w, others, mm)
        losses["bu"] = losses["bu"] + bu_loss / len(parts)
        losses["td"] = losses["td"] + info_nce(td[own], att_all[:, :-1], tau,
                                               None if far is None else far[:-1], off, w,
                                               others, mm) / len(parts)
    return losses, bu, td, att


def model_tau(model: Glom) -> float:
    """The InfoNCE temperature the training loop set on the model (default 0.1)."""
    return float(getattr(model, "tau", 0.1))


def model_far(model: Glom) -> bool:
    """Whether the training loop asked for same-image far negatives (default no)."""
    return bool(getattr(model, "far_negatives", False))


def local_step(model: Glom, x: torch.Tensor, rule: GlomRule, opt: torch.optim.Optimizer,
               sync: Callable[[], None] | None = None, g: torch.Generator | None = None
               ) -> dict[str, float]:
    """mode=local: `iterations` iterations, each net regressing the detached consensus at its
    level; gradients accumulate over iterations (averaged over processes by `sync`, under data
    parallel, where x is the global batch and this process trains on its slice) and every net
    steps once. With rule.views = 2, two shifted (and with rule.rotate / rule.scale, rotated
    and zoomed) copies of the batch (drawn from `g`) each learn from the other's consensus;
    with rule.view_mask, each with its own columns hidden.
    With rule.goodness_weight, hybrid negatives (drawn from `g`) run beside the images and
    every bottom-up net also learns the FF goodness term (`goodness_losses`)."""
    align = None
    if rule.views == 2:  # drawn for the global batch, so every process sees the same views
        first, second = (shifted(random_affine(x, rule.rotate, rule.scale, g), rule.shift, g)
                         for _ in range(2))
        if rule.shift_columns > 0:
            dy, dx = torch.randint(-rule.shift_columns, rule.shift_columns + 1, (2,),
                                   generator=g).tolist()
            second = roll_columns(second, (dy, dx), model.spec.patch)
            align = column_permutation(model.spec.grid, (dy, dx)).to(x.device)
        x = torch.cat([first, second])
    neg = None
    if rule.goodness_weight > 0:
        if rule.views != 1:
            raise ValueError("goodness_weight needs views=1")
        neg = hybrids(x, rule.blur_steps, g)  # for the global batch, like the views
    seen = x  # the views before masking (where the ink is)
    if rule.views == 2 and rule.view_mask > 0:
        x = mask_columns(x, model.spec.patch, rule.view_mask, g)[0]
    if sync is not None:  # this process's slice of every view
        x, seen = (torch.cat([distributed.shard(v) for v in t.chunk(rule.views)])
                   for t in (x, seen))
        neg = None if neg is None else distributed.shard(neg)
    n = len(x)
    both = x if neg is None else torch.cat([x, neg])  # the images, then their hybrids
    cols = model.columns(both)
    weight = None
    if rule.ink_only:  # each view's weights sum to one
        weight = torch.cat([ink_weights(v, model.spec.patch) for v in seen.chunk(rule.views)])
    per_image = None if neg is None else image_ink_weights(both, model.spec.patch)
    with torch.no_grad(), autocast(x.device, rule.dtype):
        e = model.init_state(cols)
    opt.zero_grad(set_to_none=True)
    bu_sum = td_sum = good_sum = 0.0
    for _ in range(rule.iterations):
        losses, bu, td, att = local_losses(model, cols, e, rule.dtype, weight, rule.views,
                                           align, scored=n)
        loss = losses["bu"].sum() + losses["td"].sum()
        if neg is not None:
            good = goodness_losses(bu, per_image, n, rule.goodness_temperature)
            loss = loss + rule.goodness_weight * good.sum()
            good_sum = good_sum + good.detach()
        (loss / rule.iterations).backward()
        bu_sum = bu_sum + losses["bu"].detach()
        td_sum = td_sum + losses["td"].detach()
        e = model.combine(e, bu.detach(), td.detach(), att)
    sums = [bu_sum, td_sum] + ([good_sum] if neg is not None else [])
    if sync is not None:
        sync()
        sums = [distributed.all_sum(v) / distributed.world() for v in sums]
    opt.step()
    out = {}
    for name, v in zip(("bu", "td", "good")[:len(sums)], sums, strict=True):
        out.update({f"loss_{name}{i}": float(u) / rule.iterations for i, u in enumerate(v)})
    return out


def hybrids(x: torch.Tensor, blur_steps: int, g: torch.Generator | None) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) FF negatives: each image blended with another image of the
    batch through a blurred random mask (`negatives.hybrid_images`)."""
    other = other_indices(torch.arange(len(x)), len(x), g).to(x.device)
    flat = hybrid_images(x.flatten(1), x[other].flatten(1), tuple(x.shape[1:]), blur_steps, g)
    return flat.view_as(x)


def image_ink_weights(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N): per image, 1 / count on the columns with ink in their own patch
    and 0 elsewhere (uniform over an image with no ink), so each row sums to one."""
    ink = inked(x, patch)
    ink = torch.where(ink.sum(1, keepdim=True) > 0, ink, torch.ones_like(ink))
    return ink / ink.sum(1, keepdim=True)


def goodness_losses(bu: torch.Tensor, weight: torch.Tensor, n: int, temperature: float
                    ) -> torch.Tensor:
    """(L,) FF losses of the bottom-up predictions bu (B, L, N, D), whose first `n` images are
    real and the next `n` their hybrids: per image and level the goodness is the log of the
    mean square of the prediction, averaged over columns with `weight` (B, N); each level's
    loss is the pairwise logistic loss of every real image against its hybrid
    (`ff.pairwise_loss`), and reaches only that level's bottom-up net. The log makes the loss
    depend on the ratio of the lengths, not on their scale: predictions from unit-length
    states start small, and a plain mean square would then give the term no gradient."""
    ms = bu.float().square().mean(-1)  # (B, L, N)
    good = torch.einsum("bln,bn->bl", ms, weight).clamp_min(1e-12).log()  # (B, L)
    return torch.stack([ff_rule.pairwise_loss(good[:n, lvl], good[n:, lvl], temperature)
                        for lvl in range(good.shape[1])])


def shifted(x: torch.Tensor, max_shift: int, g: torch.Generator | None) -> torch.Tensor:
    """(B, C, H, W) images, each moved by its own integer offset of up to `max_shift` pixels
    along both axes (zero fill): one view of a two-view local step."""
    return jitter(x.flatten(1), max_shift, tuple(x.shape[1:]), g).view_as(x)


def roll_columns(x: torch.Tensor, shift: tuple[int, int], patch: int) -> torch.Tensor:
    """(B, C, H, W) images rolled (wrapping around) by whole columns: shift = (down, right) in
    columns of `patch` pixels, so the content of column (r, c) lands in column (r + down,
    c + right), modulo the grid."""
    return torch.roll(x, (shift[0] * patch, shift[1] * patch), dims=(-2, -1))


def column_permutation(grid: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """(N,) long: for each column n = r * width + c of an image, the column of the same image
    rolled by `roll_columns(.., shift, ..)` that holds n's content."""
    gh, gw = grid
    r, c = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    return (((r + shift[0]) % gh) * gw + (c + shift[1]) % gw).flatten()


def mask_columns(x: torch.Tensor, patch: int, frac: float, g: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide the pixels of a random fraction of columns: (masked images, (B, N) bool mask)."""
    b, _, h, w = x.shape
    m = torch.rand(b, h // patch, w // patch, generator=g) < frac
    m = m.to(x.device)
    pix = m.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)
    return x.masked_fill(pix, 0.0), m.flatten(1)


def patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C * patch^2): each column's own pixels (reconstruction target)."""
    return F.unfold(x, kernel_size=patch, stride=patch).transpose(1, 2)


def mean_count(keep: torch.Tensor, sync: Callable[[], None] | None) -> torch.Tensor:
    """What a loss summed over the `keep` columns divides by: their count (at least 1), or under
    data parallel (`sync` given) the global batch's count over the process count, so that the
    mean of the processes' losses is the loss of the whole batch."""
    count = keep.sum().float()
    if sync is not None:
        count = distributed.all_sum(count) / distributed.world()
    return count.clamp_min(1)


def paper_step(model: Glom, head: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
               rule: GlomRule, opt: torch.optim.Optimizer, g: torch.Generator,
               sync: Callable[[], None] | None = None) -> dict[str, float]:
    """mode=paper (denoise masked columns from level 0, + InfoNCE regulariser) or
    mode=supervised (cross-entropy from the top level's mean): backprop through every
    iteration and level. Under data parallel (`sync` given) x, y are the global batch: the
    mask is drawn for all of it, this process trains on its slice, `sync` averages the
    gradients, and the masked-pixel mean is over the global batch's masked columns."""
    p = model.spec.patch
    x_in, masked = mask_columns(x, p, rule.mask_frac, g) if rule.mode == "paper" else (x, None)
    if sync is not None:
        x, x_in = distributed.shard(x), distributed.shard(x_in)
        y = None if y is None else distributed.shard(y)
        masked = None if masked is None else distributed.shard(masked)
    cols = model.columns(x_in)
    with autocast(x.device, rule.dtype):
        e = model.init_state(cols)
        reg = torch.zeros((), device=x.device)
        for _ in range(rule.iterations):
            att = model.consensus(e)
            bu, td = model.bottom_up(cols, e), model.top_down(e)
            if rule.mode == "paper":
                far = far_mask(model) if rule.far_negatives else None
                att_all, off = global_batch(att.detach())
                reg = reg + info_nce(bu, att_all, rule.tau, far, off).mean() \
                    + info_nce(td, att_all[:, :-1], rule.tau,
                               None if far is None else far[:-1], off).mean()
            e = model.combine(e, bu, td, att)
        if rule.mode == "paper":
            recon = head(e[:, 0])  # (B, N, C p^2)
            err = (recon.float() - patches(x, p)).pow(2).mean(2)  # (B, N)
            main = (err * masked).sum() / mean_count(masked, sync)
            loss = main + rule.contrast_weight * reg / rule.iterations
        elif y.dim() == 2:  # (B, N) a class per column, -1 where no object: every column
            # holding an object learns to name it (eGLOM's per-location supervision)
            logits = head(e[:, -1])  # (B, N, K)
            ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1,
                                 reduction="sum")
            main = ce / mean_count(y >= 0, sync)
            loss = main
        else:
            logits = head(e[:, -1].mean(1))
            main = F.cross_entropy(logits.float(), y)
            loss = main
    opt.zero_grad(set_to_none=True)
    loss.backward()
    stats = torch.stack([main.detach().float(), loss.detach().float()])
    if sync is not None:
        sync()
        stats = distributed.all_sum(stats) / distributed.world()
    opt.step()
    return {"loss_main": float(stats[0]), "loss_total": float(stats[1])}


def make_head(model: Glom, rule: GlomRule) -> nn.Module:
    """The extra trained piece of the backprop modes: a pixel decoder of level 0 (paper) or a
    class head on the top level (supervised); an empty module for mode=local."""
    d = model.spec.dim
    if rule.mode == "paper":
        return nn.Linear(d, model.spec.image[0] * model.spec.patch ** 2)
    if rule.mode == "supervised":
        return nn.Linear(d, rule.n_classes)
    return nn.Identity()


def train(model: Glom, head: nn.Module, batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
          steps: int, rule: GlomRule, run: Run, *, log_every: int = 100, seed: int = 0,
          progress: bool = True, on_log: Callable[[int], dict[str, float]] | None = None
          ) -> dict[str, float]:
    """`steps` training steps on `batch(step) -> (x, y)` in `rule.mode`, logging the mean
    losses every `log_every` steps (as "epoch" = step / log_every) with a checkpoint, so a
    killed run resumes where it stopped. `on_log(step)` adds evaluation metrics to a row.

    Data parallel under torch.distributed: every process draws the same global batch and
    trains on its slice; gradients are averaged across processes before each step, InfoNCE
    takes its negatives from the global batch, rank 0 evaluates (`on_log`) and writes."""
    if rule.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {rule.mode!r}")
    if distributed.pipeline_stages():
        raise ConfigError("--pipeline is for FF layer stacks; GLOM needs the whole net in every "
                          "process: use --nproc N (data parallel)")
    attach(model, rule)
    params = list(model.parameters()) + list(head.parameters())
    opt = make_optimizer("adam", params, rule.lr, rule.weight_decay)
    sync = None
    if distributed.data_parallel():
        averager = distributed.GradAverager()

        def sync() -> None:
            averager.finish(averager.start(params))

    g = torch.Generator().manual_seed(seed + 17)
    start, state = run.resume_state()
    if state is not None:
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
    start *= log_every
    sums: dict[str, float] = {}
    bar = tqdm(range(start, steps), desc=f"glom {rule.mode}", leave=False,
               disable=not progress or not sys.stderr.isatty())
    for step in bar:
        with run.timed():
            set_lr(opt, rule.lr * lr_factor(rule.schedule, step, steps))
            x, y = batch(step)
            if rule.mode == "local":
                stats = local_step(model, x, rule, opt, sync, g)
            else:
                stats = paper_step(model, head, x, y, rule, opt, g, sync)
        check_finite(stats, step, f"GLOM {rule.mode}")
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            row = {k: v / n for k, v in sums.items()}
            if on_log is not None:
                row.update(distributed.from_main(lambda s=step + 1: on_log(s)))
            run.log(epoch=(step + 1) // log_every if (step + 1) % log_every == 0
                    else round((step + 1) / log_every, 3), step=step + 1,
                    seconds=round(run.train_seconds, 2), **row)
            sums = {}
            if (step + 1) % log_every == 0:
                run.save((step + 1) // log_every, {
                    "model": model.state_dict(), "head": head.state_dict(),
                    "optimizer": opt.state_dict(), "generator": g.get_state()})
            if progress:
                print(f"step {step + 1}/{steps} " + " ".join(
                    f"{k}={v:.4g}" for k, v in row.items()) + f" ({run.train_seconds:.0f} s)",
                    flush=True)
    return {"train_seconds": run.train_seconds}


# --- running and measuring ------------------------------------------------------------------


@torch.no_grad()
def states(model: Glom, x: torch.Tensor, iterations: int, dtype: str = "bfloat16",
           batch_size: int = 200, history: bool = False) -> torch.Tensor:
    """The state after `iterations` iterations for every image, (B, L, N, D) float32, or with
    `history` every iteration's, (B, T+1, L, N, D) (T+1: the initial sweep included)."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        with autocast(xb.device, dtype):
            cols = model.columns(xb)
            e = model.init_state(cols)
            seq = [e.float()]
            for _ in range(iterations):
                e = model.step(e, cols)
                seq.append(e.float())
        out.append(torch.stack(seq, 1) if history else seq[-1])
    return torch.cat(out)


def cluster(emb: np.ndarray, threshold: float) -> np.ndarray:
    """(N, D) embeddings -> (N,) island labels: average-linkage agglomerative clustering on
    cosine similarity, merging the two most similar clusters while their mean pairwise cosine
    is at least `threshold` (unlike single linkage, a chain of neighbours does not merge two
    islands that touch)."""
    u = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return cluster_similarity(u @ u.T, threshold)


def cluster_similarity(sim: np.ndarray, threshold: float) -> np.ndarray:
    """(N, N) symmetric similarities -> (N,) labels: `cluster`'s average linkage on any
    similarity (glom-parts' position baseline passes minus the distance between columns)."""
    sim = np.array(sim, dtype=np.float64)
    n = len(sim)
    np.fill_diagonal(sim, -np.inf)
    size = np.ones(n)
    labels = np.arange(n)
    alive = np.ones(n, dtype=bool)
    while n > 1:
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        if sim[i, j] < threshold:
            break
        # Lance-Williams for average linkage: the merged cluster's mean similarity to every k
        merged = (size[i] * sim[i] + size[j] * sim[j]) / (size[i] + size[j])
        sim[i, :], sim[:, i] = merged, merged
        sim[i, i] = -np.inf
        sim[j, :], sim[:, j] = -np.inf, -np.inf
        size[i] += size[j]
        alive[j] = False
        labels[labels == j] = i
        n -= 1
    return labels


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labellings of the same items (Hubert & Arabie 1985): 1 for
    identical partitions, about 0 for independent ones. Both trivial partitions give 1."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def pairs(v: np.ndarray) -> float:
        return float((v * (v - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = len(a) * (len(a) - 1) / 2
    expected = rows * cols / total if total else 0.0
    top = 0.5 * (rows + cols)
    if top == expected:
        return 1.0
    return (index - expected) / (top - expected)


def level_ari(e: torch.Tensor, ids: torch.Tensor, threshold: float) -> np.ndarray:
    """(B, L, N, D) states, (B, N) ground-truth ids (0 = background, left out) -> (L,) ARI of
    each level's islands on the foreground columns, averaged over images."""
    e_np, ids_np = e.float().cpu().numpy(), ids.cpu().numpy()
    out = np.zeros(e.shape[1])
    for b in range(len(e_np)):
        fg = ids_np[b] > 0
        for lvl in range(e.shape[1]):
            out[lvl] += adjusted_rand_index(cluster(e_np[b, lvl][fg], threshold), ids_np[b][fg])
    return out / len(e_np)


def elapsed(t0: float) -> float:
    """Seconds since t0 (perf_counter)."""
    return time.perf_counter() - t0
