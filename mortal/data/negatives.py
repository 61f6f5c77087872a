"""Positive and negative data for contrastive local rules (Forward-Forward and kin).

A negative-data generator is any callable `(x, y, generator) -> (positive, negative)` on a batch
of flat float images `x` and labels `y`. Supervised FF embeds the label in the image; the
positive gets the true label, the negative a wrong one. Later generators (hybrid images,
model-generated samples) plug in with the same shape.
"""

from __future__ import annotations

from typing import Protocol

import torch


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
