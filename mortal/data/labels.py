"""Label noise: corrupt training labels once and for all, and measure what a noisy label still
tells you about the truth (the 2022 interview's "student beats teacher" experiment)."""

from __future__ import annotations

import math

import torch

from mortal.data.negatives import wrong_labels


def corrupt_labels(y: torch.Tensor, p: float, n_classes: int = 10,
                   g: torch.Generator | None = None) -> torch.Tensor:
    """Copy of `y` where each label, with probability `p`, is replaced by one of the other
    n_classes - 1 labels chosen uniformly (never the true one)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"corruption probability must be in [0, 1], got {p}")
    flip = torch.rand(y.shape, generator=g).to(y.device) < p
    return torch.where(flip, wrong_labels(y, n_classes, g), y)


def label_mutual_information(p: float, n_classes: int = 10) -> float:
    """I(true label; noisy label) in bits per example, for uniform true labels corrupted as in
    `corrupt_labels`: log2(K) - H(1-p, p/(K-1), ..., p/(K-1)).

    p = 0 gives log2(K) (3.32 bits for MNIST); p = (K-1)/K gives 0 (the label is independent of
    the truth); p = 0.8 gives 0.064 bits, the "0.06 bits per case" of the interview."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"corruption probability must be in [0, 1], got {p}")

    def plogp(q: float) -> float:
        return q * math.log2(q) if q > 0 else 0.0

    h_noise = -plogp(1.0 - p) - (n_classes - 1) * plogp(p / (n_classes - 1))
    return max(math.log2(n_classes) - h_noise, 0.0)
