"""Distillation (Hinton, Vinyals & Dean 2015): a student learns from a teacher's soft targets.

The teacher's logits are divided by a temperature T before the softmax, so the small
probabilities it gives wrong classes (its "dark knowledge") carry weight. The student matches
them at the same T. Multiplying the soft loss by T^2 keeps its gradients the same size as T
changes (they shrink as 1/T^2 otherwise), so a small hard-label term can be mixed in with one
weight whatever T is. Teachers' logits are cached on disk, keyed by everything that made them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mortal.data import cache_dir
from mortal.runs import checkpoint


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T): the soft targets."""
    return torch.softmax(logits / temperature, dim=-1)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                 labels: torch.Tensor | None = None, hard_weight: float = 0.0) -> torch.Tensor:
    """(1 - w) * T^2 * KL(soft teacher || soft student) + w * CE(student at T=1, labels).

    The KL differs from the paper's cross-entropy with soft targets by the teacher's entropy, a
    constant, so the gradients are the same; the KL is 0 when the student matches."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=-1),
                    F.log_softmax(teacher_logits / t, dim=-1),
                    log_target=True, reduction="batchmean") * t * t
    if labels is None or hard_weight == 0.0:
        return soft
    return (1.0 - hard_weight) * soft + hard_weight * F.cross_entropy(student_logits, labels)


def cache_key(**parts: Any) -> str:
    """A short stable hash of JSON-able parts (config, seed, dataset checksum, versions)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached(key: str, make: Callable[[], dict[str, Any]], *, use_cache: bool = True,
           kind: str = "teachers") -> tuple[dict[str, Any], Path | None]:
    """`make()` once per key: its result (tensors and plain values) is stored atomically in the
    cache (MORTAL_CACHE or ~/.cache/mortal) and read back on later calls. Returns (value, path
    it came from or went to); with use_cache=False, just `make()`."""
    if not use_cache:
        return make(), None
    path = Path(cache_dir()) / kind / f"{key}.safetensors"
    if path.exists():
        try:
            return checkpoint.load(path), path
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(path, value)
    return value, path
