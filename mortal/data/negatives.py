"""Positive and negative data for contrastive local rules (Forward-Forward and kin).

A negative-data generator is any callable `(x, y, generator) -> (positive, negative)` on a batch
of flat float images `x` and labels `y`. Supervised FF embeds the label in the image; the
positive gets the true label, the negative a wrong one. Later generators (hybrid images,
model-generated samples) plug in with the same shape.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Negatives(Protocol):
    """Makes a (positive, negative) pair of batches from images and labels."""

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def embed_label(x: torch.Tensor, y: torch.Tensor, n_classes: int = 10,
                value: float = 1.0) -> torch.Tensor:
    """Copy of flat images `x` (N, D) whose first `n_classes` pixels hold a one-hot of `y`."""
    out = x.clone()
    out[:, :n_classes] = 0
    out[torch.arange(len(x), device=x.device), y] = value
    return out


def embed_neutral(x: torch.Tensor, n_classes: int = 10, value: float = 1.0) -> torch.Tensor:
    """Copy of `x` whose label pixels are all value/n_classes: 'no label', for one-pass use."""
    out = x.clone()
    out[:, :n_classes] = value / n_classes
    return out


def wrong_labels(y: torch.Tensor, n_classes: int = 10,
                 g: torch.Generator | None = None) -> torch.Tensor:
    """A label for each example, uniform over the n_classes - 1 labels that are not `y`."""
    shift = torch.randint(1, n_classes, y.shape, generator=g, device="cpu").to(y.device)
    return (y + shift) % n_classes


def hard_wrong_labels(scores: torch.Tensor, y: torch.Tensor,
                      g: torch.Generator | None = None) -> torch.Tensor:
    """Wrong labels drawn in proportion to the model's softmax over `scores` (N, C), true label
    excluded: the negatives the model currently finds most plausible."""
    logits = scores.float().clone()
    logits[torch.arange(len(y), device=y.device), y] = float("-inf")
    probs = torch.softmax(logits, dim=1)
    return torch.multinomial(probs.cpu(), 1, generator=g).squeeze(1).to(y.device)


class WrongLabel:
    """Supervised FF negatives: the same image with a wrong label embedded (uniform, or from
    `label_table` when hard negatives have been computed for the dataset)."""

    def __init__(self, n_classes: int = 10, value: float = 1.0) -> None:
        self.n_classes, self.value = n_classes, value

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator | None = None,
                 y_neg: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if y_neg is None:
            y_neg = wrong_labels(y, self.n_classes, g)
        return (embed_label(x, y, self.n_classes, self.value),
                embed_label(x, y_neg, self.n_classes, self.value))


def blur_mask(n: int, shape: tuple[int, int], blur_steps: int = 6,
              g: torch.Generator | None = None, device: torch.device | str = "cpu"
              ) -> torch.Tensor:
    """(n, H, W) masks of 0s and 1s with large regions: random bits, blurred `blur_steps` times
    with [1/4, 1/2, 1/4] along rows and columns, then thresholded at 0.5 (FF paper, §3.2)."""
    h, w = shape
    m = torch.randint(0, 2, (n, 1, h, w), generator=g).float().to(device)
    k = torch.tensor([0.25, 0.5, 0.25], device=device)
    for _ in range(blur_steps):
        m = F.conv2d(F.pad(m, (1, 1, 0, 0), mode="replicate"), k.view(1, 1, 1, 3))
        m = F.conv2d(F.pad(m, (0, 0, 1, 1), mode="replicate"), k.view(1, 1, 3, 1))
    return (m[:, 0] > 0.5).float()


def hybrid_images(x: torch.Tensor, other: torch.Tensor, image_shape: tuple[int, int, int],
                  blur_steps: int = 6, g: torch.Generator | None = None) -> torch.Tensor:
    """Unsupervised FF negatives: mask * x + (1 - mask) * other, on flat images (N, C*H*W).
    They have real short-range structure (strokes) but wrong long-range shape."""
    c, h, w = image_shape
    mask = blur_mask(len(x), (h, w), blur_steps, g, x.device)[:, None].expand(-1, c, -1, -1)
    mask = mask.reshape(len(x), -1)
    return mask * x + (1.0 - mask) * other


def other_indices(idx: torch.Tensor, n: int, g: torch.Generator | None = None) -> torch.Tensor:
    """For each index in `idx`, a uniformly drawn different index in range(n)."""
    shift = torch.randint(1, n, idx.shape, generator=g).to(idx.device)
    return (idx + shift) % n
