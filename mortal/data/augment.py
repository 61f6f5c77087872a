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


def affine(x: torch.Tensor, degrees: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images, each rotated by its own angle (degrees, counter-clockwise as
    drawn, row 0 at the top) and zoomed by its own factor (> 1 enlarges) about the image
    centre; bilinear, zeros outside. One `affine_grid` + `grid_sample` for the batch."""
    rad = torch.deg2rad(degrees.to(x.device, torch.float32))
    inv = 1.0 / scales.to(x.device, torch.float32)  # the grid maps output to input points
    cos, sin = torch.cos(rad) * inv, torch.sin(rad) * inv
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                         torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3), (x, y) order
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).to(x.dtype)


def random_affine(x: torch.Tensor, max_degrees: float, max_scale: float,
                  g: torch.Generator | None = None) -> torch.Tensor:
    """`affine` with each image's angle uniform in [-max_degrees, max_degrees] and its zoom
    uniform in [1 - max_scale, 1 + max_scale]: the small rotations and size changes a digit
    can take and stay the same digit. Both 0: x itself."""
    if max_degrees <= 0 and max_scale <= 0:
        return x
    u = torch.rand(2, len(x), generator=g) * 2 - 1
    return affine(x, u[0] * max_degrees, 1 + u[1] * max_scale)
