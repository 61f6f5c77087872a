"""Data augmentation that runs on whole batches in memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def jitter(x: torch.Tensor, max_shift: int, image_shape: tuple[int, int, int] = (1, 28, 28),
           g: torch.Generator | None = None) -> torch.Tensor:
    """Shift each flat image (N, C*H*W) by its own integer offset in [-max_shift, max_shift]
    along both axes, filling with zeros: the "jittered by up to two pixels" of Hinton's MNIST
    nets. One gather for the whole batch, no loop over images."""
    if max_shift <= 0:
        return x
    n = x.shape[0]
    c, h, w = image_shape
    s = max_shift
    padded = F.pad(x.reshape(n, c, h, w), (s, s, s, s))
    dy, dx = torch.randint(0, 2 * s + 1, (2, n), generator=g).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols].reshape(n, c * h * w)
