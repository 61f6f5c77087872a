"""Shared pieces of the data layer: the user-facing error, the cache folder, checksums, and
atomic file writes (so an interrupted run never leaves a half-written file under a real name)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np


class DataError(Exception):
    """User-facing data problem. str(err) is ONE paragraph naming the file, what is wrong, and
    what to do. The CLI prints it with no traceback."""


def cache_dir() -> Path:
    """The user cache for datasets and decoded copies: $MORTAL_CACHE, else
    $XDG_CACHE_HOME/mortal, else ~/.cache/mortal (not created here)."""
    env = os.environ.get("MORTAL_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "mortal"
    return Path.home() / ".cache" / "mortal"


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of an in-memory buffer."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks (md5 for CIFAR's tarball, sha256 otherwise)."""
    h = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}). Check that the file "
                        "exists and is readable.") from None
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(target: Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside `target`; on success move it over `target` (os.replace), on
    failure delete it. Readers thus see either the old file or the complete new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_copy(src: Path, target: Path) -> None:
    """Copy `src` to `target` atomically."""
    with open(src, "rb") as fin, atomic_output(target) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def atomic_write(target: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(fileobj)` on a temporary file, then move it over `target` atomically."""
    with atomic_output(target) as f:
        write(f)


@dataclass(eq=False)
class Arrays:
    """A dataset as numpy arrays (uint8 images N,C,H,W; int64 labels), plus how it was read."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    fmt: str            # e.g. "idx, gzip" or "CIFAR-10 python pickles in cifar-10-python.tar.gz"
    verified: str       # e.g. "sha256 of 4 files verified"
    note: str = ""


def refetch_hint(name: str) -> str:
    """The standard 'what to do' sentence for a damaged dataset file."""
    return (f"Replace it with a good copy: delete it and run `mortal data fetch {name}` to "
            "download it again, or point --root (or MORTAL_DATA) at a good copy.")


def say(message: str) -> None:
    """A progress line on stderr for slow steps (downloads, first decode); stdout stays clean."""
    print(f"mortal: {message}", file=sys.stderr, flush=True)
