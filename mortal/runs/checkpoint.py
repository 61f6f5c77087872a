"""Atomic checkpoints in safetensors: model, optimizer and RNG state in one file.

Nested state dicts (an optimizer's, say) are split into flat tensors, stored as safetensors, and a
JSON skeleton, stored in the file's metadata, that says where each tensor goes back. The file is
written to a temporary name and renamed, so a killed run leaves either the old or the new
checkpoint, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested structure by a reference; collect tensors by key."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        int_keys = bool(obj) and all(isinstance(k, int) for k in obj)
        items = {str(k): _flatten(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        return {"__intdict__": items} if int_keys else items
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} at {prefix}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__intdict__" in obj:
            return {int(k): _unflatten(v, tensors) for k, v in obj["__intdict__"].items()}
        if "__list__" in obj:
            return [_unflatten(v, tensors) for v in obj["__list__"]]
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    return obj


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (nested dicts/lists of tensors and plain values) atomically to `path`."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    # One temporary name per process, so concurrent writers of the same file (the ranks of a
    # distributed run caching one teacher) cannot rename each other's half-written file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"mortal_skeleton": json.dumps(skeleton)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save`, restoring the nested structure."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        skeleton = json.loads(f.metadata()["mortal_skeleton"])
    return _unflatten(skeleton, load_file(str(path)))


def rng_state() -> dict[str, Any]:
    """The global RNG states a training loop may draw from (torch CPU; CUDA when present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
