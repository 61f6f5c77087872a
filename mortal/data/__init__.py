"""Datasets for mortal: find MNIST, Fashion-MNIST and CIFAR-10 on this machine (or fetch them),
verify them, and load them as uint8 image tensors (N, C, H, W) with int64 labels.

Lookup order: the `root` argument (--root), $MORTAL_DATA/<name>/, the cache (cache_dir()), the
system folders (Debian's /usr/share/datasets), then fetch(). Every problem is a DataError whose
text is one paragraph naming the file, what is wrong and what to do."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mortal.data import cifar, idx, sources
from mortal.data.common import Arrays, DataError, cache_dir
from mortal.data.specs import DATASETS, Spec, canonical_name, get_spec

__all__ = ["DATASETS", "DataError", "Dataset", "Spec", "cache_dir", "canonical_name", "check",
           "describe", "fetch", "load", "locate", "names"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset in memory: uint8 images (N, C, H, W) and int64 labels, train and test."""

    name: str                 # "mnist" | "fashion-mnist" | "cifar10"
    x_train: torch.Tensor     # uint8, (N, C, H, W)
    y_train: torch.Tensor     # int64, (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    source: str               # where it was loaded from (path) and which format
    note: str = ""            # e.g. "CIFAR-10 (JPEG copy)" for the lossy image-folder copy


def names() -> list[str]:
    """Canonical dataset names, in display order."""
    return list(DATASETS)


def locate(name: str, root: str | os.PathLike | None = None) -> Path:
    """The dataset's own folder (or archive) by the lookup order, without fetching; DataError
    when it is nowhere, or when `root` is given and does not hold it."""
    spec = get_spec(name)
    found, places = sources.find(spec, root)
    if found is None:
        raise DataError(sources.not_found_message(spec, places))
    return found.path


def _read(spec: Spec, found: sources.Found, *, verify: bool = True) -> Arrays:
    readers = {
        sources.IDX: lambda p: idx.read_idx_dataset(p, spec, verify=verify),
        sources.PY_TAR: lambda p: cifar.read_python_tar(p, spec, verify=verify),
        sources.PY_DIR: lambda p: cifar.read_python_dir(p, spec, verify=verify),
        sources.IMG_TAR: lambda p: cifar.read_image_tar(p, spec, verify=verify),
        sources.IMG_DIR: lambda p: cifar.read_image_dir(p, spec, verify=verify),
    }
    return readers[found.layout](found.file)


def check(name: str, root: str | os.PathLike | None = None) -> str:
    """Fully validate a dataset where it is found (header, counts, labels, checksums, images
    decodable) and return a one-line OK summary; DataError otherwise. Never downloads."""
    spec = get_spec(name)
    found, places = sources.find(spec, root)
    if found is None:
        raise DataError(sources.not_found_message(spec, places))
    a = _read(spec, found)
    c, h, w = a.x_train.shape[1:]
    note = f"; {a.note}" if a.note else ""
    return (f"{spec.name} OK: {len(a.y_train)} train + {len(a.y_test)} test images {c}x{h}x{w}, "
            f"labels 0..{len(spec.classes) - 1}; {a.verified}; {found.file} ({a.fmt}, "
            f"via {found.origin}){note}")


def _tensor(a: np.ndarray) -> torch.Tensor:
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def load(name: str, root: str | os.PathLike | None = None, *, fetch: bool = True) -> Dataset:
    """Find (or, with fetch=True, acquire) a dataset, verify it, and return it as tensors."""
    spec = get_spec(name)
    found, places = sources.find(spec, root)
    if found is None:
        message = sources.not_found_message(spec, places)
        if not fetch:
            raise DataError(message)
        try:
            path = sources.fetch(spec)
        except DataError as e:
            raise DataError(f"{message} Fetching it automatically failed too: {e}") from None
        found = sources.detect(spec, path, "fetch")
        if found is None:
            raise DataError(f"{path}: fetching {spec.name} finished but the folder holds no "
                            f"dataset files. Run `mortal data fetch {spec.name}` again.")
    a = _read(spec, found)
    return Dataset(
        name=spec.name,
        x_train=_tensor(a.x_train),
        y_train=_tensor(a.y_train.astype(np.int64, copy=False)),
        x_test=_tensor(a.x_test),
        y_test=_tensor(a.y_test.astype(np.int64, copy=False)),
        classes=spec.classes,
        source=f"{found.file} ({a.fmt}, via {found.origin})",
        note=a.note,
    )


def fetch(name: str, dest: str | os.PathLike | None = None) -> Path:
    """Acquire a dataset into the cache (or `dest`), verify it, and return its folder; a
    failure (no network, bad checksum, ...) is a DataError saying what to do."""
    return sources.fetch(get_spec(name), dest)


def describe(name: str) -> str:
    """One line for `mortal data list`: name, sizes, formats, and where it was found."""
    spec = get_spec(name)
    c, h, w = spec.shape
    head = (f"{spec.name:<13} {spec.n_train}+{spec.n_test} images {c}x{h}x{w}, "
            f"{len(spec.classes)} classes; formats: {spec.formats};")
    try:
        found, _ = sources.find(spec)
    except DataError as e:
        text = str(e)
        return f"{head} PROBLEM: {text[:140] + '...' if len(text) > 140 else text}"
    if found is None:
        return f"{head} not found (get it with `mortal data fetch {spec.name}`)"
    return f"{head} found: {found.file} ({found.layout}, via {found.origin})"
