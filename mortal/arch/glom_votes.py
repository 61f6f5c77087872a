"""GLOM levels whose islands are votes: each column votes for where its whole is and what it is.

One level (`VoteLevel`) has three parts, as GLOM has:
  bottom-up   a conv net (no position input, zero padding, receptive field 33 pixels) gives
              every 4x4 patch (column) a vote: a centre (its own place plus an offset of at
              most `reach` pixels) and a code (softmax over `k`)
  attention   no learned weights: `rounds` rounds in which every column's (centre, code)
              moves to the similarity-weighted mean of its image's foreground columns
              (Gaussian in the centre, `sigma` pixels, plus `beta` x the codes' dot product:
              a mean shift). Columns that voted alike end as one island
  top-down    a neural field (one MLP at every column) draws what the column holds from its
              island's code and the column's place relative to the island's centre: the
              column's pixels for the lowest level, the level below's settled vote above it

Why votes: an island must stand for one whole, so the columns of one part (or object) need a
shared value that the columns of a touching one do not share. A centre of the whole is such a
value (the capsule / Hough idea); measured in docs/glom.md (fifteenth session) and trained by
mortal.rules.glom_votes. Shapes: images (B, 1, H, W), columns N = (H/4)(W/4) row-major.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PATCH = 4  # pixels per column side: the vote net's two stride-2 convolutions


def vote_net(k: int) -> nn.Module:
    """(B, 1, H, W) -> (B, 2 + k, H/4, W/4): each column's offset and code logits."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(),
        nn.Conv2d(32, 64, 5, padding=2, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 5, padding=2, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(),
        nn.Conv2d(64, 2 + k, 1))


def field_net(k: int, out: int, hidden: int = 128) -> nn.Module:
    """The top-down neural field: (code k, relative place 2) -> `out` numbers."""
    return nn.Sequential(nn.Linear(k + 2, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, out))


def patch_centres(height: int, width: int) -> torch.Tensor:
    """(N, 2) the (x, y) pixel centre of every column, row-major."""
    gy, gx = torch.meshgrid(torch.arange(height // PATCH) * PATCH + PATCH / 2,
                            torch.arange(width // PATCH) * PATCH + PATCH / 2, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).float()


def patches(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, N, 16): each column's pixels."""
    return F.unfold(images, PATCH, stride=PATCH).transpose(1, 2)


def inked(images: torch.Tensor, min_ink: float = 0.25) -> torch.Tensor:
    """(B, 1, H, W) -> (B, N) bool: the columns with at least `min_ink` of their pixels inked,
    the foreground the attention runs over (read from the pixels, not from any labels)."""
    return F.avg_pool2d(images, PATCH).flatten(1) >= min_ink


def settle(centre: torch.Tensor, code: torch.Tensor, fg: torch.Tensor, rounds: int,
           sigma: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GLOM's attention, `rounds` times: (B, N, 2) centres and (B, N, k) codes each become the
    mean over the image's foreground columns (fg (B, N) bool) with weights
    softmax_j(-|c_i - c_j|^2 / 2 sigma^2 + beta code_i . code_j)."""
    return settle_rounds(centre, code, fg, rounds, sigma, beta)[-1]


def settle_rounds(centre: torch.Tensor, code: torch.Tensor, fg: torch.Tensor, rounds: int,
                  sigma: float, beta: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`settle`, keeping every round's (centre, code): rounds + 1 pairs, the votes first."""
    out = [(centre, code)]
    for _ in range(rounds):
        logits = -torch.cdist(centre, centre).pow(2) / (2 * sigma**2) \
            + beta * code @ code.transpose(1, 2)
        a = torch.softmax(logits.masked_fill(~fg[:, None, :], -1e9), 2)
        centre, code = a @ centre, a @ code
        out.append((centre, code))
    return out


class VoteLevel(nn.Module):
    """One level: votes (bottom-up), islands (attention), and the field that draws from them.

    `draws` is how many numbers the field draws per column: 16 pixels for the lowest level,
    k + 2 (the level below's code and centre offset) above it."""

    def __init__(self, image: tuple[int, int], k: int = 4, draws: int = PATCH * PATCH,
                 sigma: float = 4.0, beta: float = 2.0, rounds: int = 3, reach: float = 12.0
                 ) -> None:
        super().__init__()
        self.k, self.sigma, self.beta, self.rounds, self.reach = k, sigma, beta, rounds, reach
        self.vote = vote_net(k)
        self.field = field_net(k, draws)
        self.register_buffer("centres", patch_centres(*image), persistent=False)

    def votes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each column's vote before settling: centre (B, N, 2) in pixels, code (B, N, k)."""
        out = self.vote(images).flatten(2).transpose(1, 2)  # (B, N, 2 + k)
        return (self.centres + self.reach * torch.tanh(out[..., :2]),
                torch.softmax(out[..., 2:], -1))

    def forward(self, images: torch.Tensor, fg: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(votes, settled centres, settled codes) of the foreground columns' islands."""
        votes, code = self.votes(images)
        centre, code = settle(votes, code, fg, self.rounds, self.sigma, self.beta)
        return votes, centre, code

    def draw(self, centre: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """(B, N, draws): what the field draws at every column from its island."""
        rel = (self.centres - centre) / self.reach
        return self.field(torch.cat([code, rel], -1))

    def summary(self, centre: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """(B, N, k + 2) what the level above draws of this level at each column: the island's
        code and its centre relative to the column, in units of `reach`."""
        return torch.cat([code, (centre - self.centres) / self.reach], -1)
