"""How a vote level (mortal.arch.glom_votes) learns: its islands must draw what they cover.

The loss of one level, per foreground column i of an image, averaged:
  draw     the field's drawing of the column from its island (code, place relative to the
           island's centre) against what is there: the column's pixels (cross-entropy) for
           the lowest level; above it the frozen level below's settled vote (squared error)
           and, if the field has room for them, the pixels too
  density  `density` x (lam |offset_i|^2 - log sum_j w_ij exp(-|v_i - v_j|^2 / 2 s^2)), j over
           the image's other foreground columns: a vote is cheap where many others vote, and
           `lam` is a prior on how far from itself a column may vote (the size of a whole).
           w_ij = 1 ("all"), or, above level 0 with `across`, 1 - exp(-|u_i - u_j|^2 / 2 s^2)
           with u the level below's settled centres: only votes shared with columns of *other*
           islands below count, so a whole must span several parts (a parse tree's node has
           more than one child), and a level that copies the islands below gains nothing
Measured (docs/glom.md, fifteenth session): drawing alone leaves every column a private
vote; density alone merges the objects that touch; together, islands are parts or objects
depending on `lam` and on what is drawn.

Each level is trained end to end through its rounds of attention; the level below is frozen
and gets no gradient from the level above. This is not GLOM's `mode=local`, where no
gradient would cross an iteration.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mortal.arch.glom_votes import PATCH, VoteLevel, patches
from mortal.runs import check_finite


def vote_density(votes: torch.Tensor, fg: torch.Tensor, centres: torch.Tensor, sigma: float,
                 lam: float, below: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over foreground columns of lam |v_i - c_i|^2 - log sum_j w_ij exp(-|v_i - v_j|^2 /
    2 sigma^2), j over the same image's other foreground columns. votes (B, N, 2), fg (B, N),
    centres (N, 2) the columns' own places. w_ij = 1, or with `below` (B, N, 2), the level
    below's settled centres, 1 - exp(-|u_i - u_j|^2 / 2 sigma^2): pairs in one island below
    do not count."""
    off2 = (votes - centres).pow(2).sum(-1)
    logits = -torch.cdist(votes, votes).pow(2) / (2 * sigma**2)
    if below is not None:
        apart = -torch.expm1(-torch.cdist(below, below).pow(2) / (2 * sigma**2))
        logits = logits + apart.clamp_min(1e-6).log()
    eye = torch.eye(votes.shape[1], dtype=torch.bool, device=votes.device)
    pair = fg.unsqueeze(1) & fg.unsqueeze(2) & ~eye
    dens = torch.logsumexp(logits.masked_fill(~pair, -1e9), 2)
    return ((lam * off2 - dens) * fg).sum() / fg.sum().clamp_min(1)


def draw_loss(level: VoteLevel, centre: torch.Tensor, code: torch.Tensor, fg: torch.Tensor,
              images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """The drawing's error on the foreground columns. With `target` None the field draws the
    column's pixels (cross-entropy); else the level below's summary (B, N, k + 2), by mean
    squared error, and also the pixels when the field draws 16 + k + 2 numbers (pixels first)."""
    drawn = level.draw(centre, code)[fg]
    n_pix = PATCH * PATCH
    n_target = 0 if target is None else target.shape[-1]
    if drawn.shape[-1] not in (n_target, n_pix + n_target):
        raise ValueError(f"the field draws {drawn.shape[-1]} numbers per column: expected "
                         f"{n_target} (the level below) or {n_pix + n_target} (pixels too)")
    loss = drawn.new_zeros(())
    if drawn.shape[-1] > n_target:
        loss = F.binary_cross_entropy_with_logits(drawn[:, :n_pix], patches(images)[fg])
    if target is not None:
        loss = loss + F.mse_loss(drawn[:, -n_target:], target[fg])
    return loss


def below_state(below: VoteLevel | None, images: torch.Tensor, fg: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The frozen level below's settled (centres, codes), or None for the lowest level."""
    if below is None:
        return None
    with torch.no_grad():
        _, centre, code = below(images, fg)
        return centre, code


def level_loss(level: VoteLevel, below: VoteLevel | None, images: torch.Tensor,
               fg: torch.Tensor, density: float, density_sigma: float, lam: float,
               across: bool = False) -> dict[str, torch.Tensor]:
    """The loss terms of one batch: draw, density and their total ("loss"). With `across`,
    the density counts only votes shared across the level below's islands."""
    votes, centre, code = level(images, fg)
    st = below_state(below, images, fg)
    target = None if st is None or below is None else below.summary(*st)
    draw = draw_loss(level, centre, code, fg, images, target)
    dens = vote_density(votes, fg, level.centres, density_sigma, lam,
                        st[0] if across and st is not None else None)
    return {"loss": draw + density * dens, "draw": draw, "density": dens}


def ramped(weight: float, step: int, ramp: int) -> float:
    """`weight` scaled by (step + 1) / ramp for the first `ramp` steps (0-based `step`)."""
    return weight * min(1.0, (step + 1) / ramp) if ramp > 0 else weight


def train_level(level: VoteLevel, below: VoteLevel | None,
                batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]], steps: int, run: Any,
                *, density: float, density_sigma: float, lam: float, lr: float,
                across: bool = False, ramp: int = 0, log_every: int = 250,
                name: str = "level", progress: bool = True) -> dict[str, float]:
    """Adam on `level` for `steps` steps of `batch(step) -> (images, fg)`; the mean loss terms
    logged and the level checkpointed every `log_every` steps, so a killed run resumes where
    it stopped (`run.resume_state`). `below` is frozen. The density's weight rises linearly
    from 0 over the first `ramp` steps: meant to let the drawing learn before votes are
    pulled together; measured worse with `across` (docs/glom.md, seventeenth session)."""
    if below is not None:
        below.requires_grad_(False).eval()
    opt = torch.optim.Adam(level.parameters(), lr)
    start, state = run.resume_state()
    if state is not None:
        level.load_state_dict(state["level"])
        opt.load_state_dict(state["optimizer"])
    sums: dict[str, float] = {}
    bar = tqdm(range(start * log_every, steps), desc=name, leave=False,
               disable=not progress or not sys.stderr.isatty())
    for step in bar:
        with run.timed():
            images, fg = batch(step)
            terms = level_loss(level, below, images, fg, ramped(density, step, ramp),
                               density_sigma, lam, across)
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
        check_finite(terms, step, name)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = step % log_every + 1
            row = {k: v / n for k, v in sums.items()}
            run.log(step=step + 1, seconds=round(run.train_seconds, 2), **row)
            sums = {}
            if (step + 1) % log_every == 0:
                run.save((step + 1) // log_every,
                         {"level": level.state_dict(), "optimizer": opt.state_dict()})
            if progress:
                print(f"{name} step {step + 1}/{steps} " + " ".join(
                    f"{k}={v:.4g}" for k, v in row.items()) + f" ({run.train_seconds:.0f} s)",
                    flush=True)
    return {"train_seconds": run.train_seconds}
