"""CIFAR-10 readers: the canonical python-pickle format (tarball or extracted folder) and the
image-folder layout train/<class>/*.jpg, test/<class>/*.jpg (extracted or inside a tarball).
Decoded image folders are cached as .npz in the cache folder, since decoding 60k JPEGs is slow."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mortal.data.common import (
    Arrays,
    DataError,
    atomic_write,
    cache_dir,
    file_digest,
    refetch_hint,
    say,
)
from mortal.data.specs import (
    CIFAR_JPEG_NOTE,
    CIFAR_JPEG_SHA256,
    CIFAR_JPEG_TAR,
    CIFAR_PYTHON_DIR,
    CIFAR_PYTHON_MD5,
    CIFAR_PYTHON_TAR,
    Spec,
)

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

PY_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
PY_TEST = "test_batch"
PY_BATCHES = (*PY_TRAIN, PY_TEST)
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
SPLITS = ("train", "test")
DECODED_VERSION = "v2"


def _fix(name: str) -> str:
    return (f"Replace the CIFAR-10 copy: put the canonical {CIFAR_PYTHON_TAR} there (or run "
            f"`mortal data fetch {name}`), or point --root at a good copy.")


# ---------------------------------------------------------------- python-pickle format

_PICKLE_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,
}
for _mod in ("numpy.core", "numpy._core"):
    _PICKLE_ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _PICKLE_ALLOWED[(f"{_mod}.multiarray", "scalar")] = _multiarray.scalar
    _PICKLE_ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = _numeric._frombuffer


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays and plain containers: a batch file is data, so
    a crafted pickle must not be able to run code."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 batch "
                                         "never contains") from None


def _unpickle(raw: bytes, where: str, name: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # pickle raises many types; all mean "not a batch file"
        raise DataError(f"{where}: cannot be read as a CIFAR-10 python batch ({e}). {_fix(name)}"
                        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: is not a CIFAR-10 python batch (holds a "
                        f"{type(obj).__name__}, not a dict). {_fix(name)}")
    return obj


def _batch_arrays(obj: dict, where: str, spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    c, h, w = spec.shape
    if data is None or labels is None:
        raise DataError(f"{where}: is not a CIFAR-10 python batch (no 'data' and 'labels' "
                        f"entries). {_fix(spec.name)}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != c * h * w:
        raise DataError(f"{where}: 'data' is {data.dtype} with shape {data.shape}, expected uint8 "
                        f"rows of {c * h * w} bytes (N x {c * h * w}); the batch is damaged. "
                        f"{_fix(spec.name)}")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{where}: 'labels' is not a list of integers. {_fix(spec.name)}"
                        ) from None
    if len(y) != len(data):
        raise DataError(f"{where}: count mismatch: {len(data)} images but {len(y)} labels. "
                        f"{_fix(spec.name)}")
    bad = (y < 0) | (y >= len(spec.classes))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where}: label out of range: label {int(y[i])} at index {i}, but "
                        f"CIFAR-10 labels are 0..{len(spec.classes) - 1}. {_fix(spec.name)}")
    return data.reshape(-1, c, h, w), y


def _assemble_python(raws: dict[str, tuple[bytes, str]], spec: Spec, verify: bool,
                     source: Path, fmt: str, verified: str) -> Arrays:
    parts = {b: _batch_arrays(_unpickle(raw, where, spec.name), where, spec)
             for b, (raw, where) in raws.items()}
    x_train = np.concatenate([parts[b][0] for b in PY_TRAIN])
    y_train = np.concatenate([parts[b][1] for b in PY_TRAIN])
    x_test, y_test = parts[PY_TEST]
    arrays = Arrays(x_train, y_train, np.ascontiguousarray(x_test), y_test, fmt, verified)
    _check_counts(arrays, spec, str(source), verify)
    return arrays


def read_python_tar(path: Path, spec: Spec, *, verify: bool = True) -> Arrays:
    """Read cifar-10-python.tar.gz without extracting it; with verify, check its md5 (when it
    has the canonical name) and the 50000/10000 counts."""
    verified = "counts checked" if verify else "not verified"
    if verify and path.name == CIFAR_PYTHON_TAR:
        got = file_digest(path, "md5")
        if got != CIFAR_PYTHON_MD5:
            raise DataError(f"{path}: checksum mismatch: md5 is {got[:12]}..., expected "
                            f"{CIFAR_PYTHON_MD5[:12]}.... The file is corrupt (an interrupted "
                            f"download?) or not the canonical CIFAR-10 python archive. "
                            f"{refetch_hint(spec.name)}")
        verified = "md5 of the archive verified"
    raws: dict[str, tuple[bytes, str]] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                base = posixpath.basename(m.name)
                if m.isfile() and base in PY_BATCHES and base not in raws:
                    f = tf.extractfile(m)
                    assert f is not None
                    raws[base] = (f.read(), f"{path}:{m.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt archive, it cannot be read as a tar.gz ({e}). "
                        f"{_fix(spec.name)}") from None
    missing = [b for b in PY_BATCHES if b not in raws]
    if missing:
        raise DataError(f"{path}: missing file: the archive lacks {', '.join(missing)} (a "
                        f"CIFAR-10 python archive holds {CIFAR_PYTHON_DIR}/data_batch_1..5 and "
                        f"test_batch). {_fix(spec.name)}")
    return _assemble_python(raws, spec, verify, path, f"python pickles in {path.name}",
                            verified)


def read_python_dir(folder: Path, spec: Spec, *, verify: bool = True) -> Arrays:
    """Read an extracted cifar-10-batches-py/ folder; with verify, check the counts."""
    missing = [str(folder / b) for b in PY_BATCHES if not (folder / b).is_file()]
    if missing:
        raise DataError(f"{', '.join(missing)}: missing file. The folder {folder} must hold "
                        f"data_batch_1..5 and test_batch. {_fix(spec.name)}")
    raws = {}
    for b in PY_BATCHES:
        try:
            raws[b] = ((folder / b).read_bytes(), str(folder / b))
        except OSError as e:
            raise DataError(f"{folder / b}: cannot be read ({e.strerror or e}). Check that the "
                            "file is readable.") from None
    verified = "counts checked" if verify else "not verified"
    return _assemble_python(raws, spec, verify, folder, f"python pickles in {folder.name}/",
                            verified)


# ---------------------------------------------------------------- image folders


@dataclass
class _Item:
    split: int          # 0 train, 1 test
    label: int
    where: str          # "archive.tar.gz:train/cat/0001.jpg" or a file path
    read: Callable[[], bytes]


def _class_index(spec: Spec, cls: str, where: str) -> int:
    lower = [c.lower() for c in spec.classes]
    if cls.lower() not in lower:
        raise DataError(f"{where}: unknown class folder {cls!r}; CIFAR-10 image folders must be "
                        f"named {', '.join(spec.classes)}. Remove or rename the folder, or point "
                        "--root at a proper CIFAR-10 copy.")
    return lower.index(cls.lower())


def _is_image(name: str) -> bool:
    return not name.startswith(".") and posixpath.splitext(name)[1].lower() in IMAGE_EXTS


def _collect_tar(path: Path, spec: Spec) -> list[_Item]:
    items = []
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                parts = m.name.strip("/").split("/")
                if not m.isfile() or len(parts) < 3 or parts[-3] not in SPLITS:
                    continue
                if not _is_image(parts[-1]):
                    continue
                where = f"{path}:{m.name}"
                label = _class_index(spec, parts[-2], f"{path}:{posixpath.dirname(m.name)}")
                f = tf.extractfile(m)
                assert f is not None
                data = f.read()
                items.append(_Item(SPLITS.index(parts[-3]), label, where,
                                   lambda data=data: data))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt archive, it cannot be read as a tar.gz ({e}). "
                        f"{refetch_hint(spec.name)}") from None
    return items


def _collect_dir(folder: Path, spec: Spec) -> list[_Item]:
    items = []
    for si, split in enumerate(SPLITS):
        top = folder / split
        if not top.is_dir():
            continue
        for cdir in sorted(os.scandir(top), key=lambda e: e.name):
            if not cdir.is_dir() or cdir.name.startswith("."):
                continue
            label = _class_index(spec, cdir.name, cdir.path)
            for f in os.scandir(cdir.path):
                if f.is_file() and _is_image(f.name):
                    items.append(_Item(si, label, f.path, lambda p=f.path: Path(p).read_bytes()))
    return items


def _dir_key(folder: Path) -> str:
    """Cache key of an extracted image folder: names, sizes and mtimes of all its files."""
    lines = []
    for split in SPLITS:
        for dirpath, _dirs, files in os.walk(folder / split):
            for fn in files:
                st = os.stat(os.path.join(dirpath, fn))
                rel = os.path.relpath(os.path.join(dirpath, fn), folder)
                lines.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def _interleave(items: list[_Item]) -> list[_Item]:
    """Order images round-robin over classes (1st of each class, then 2nd, ...), each class
    sorted by name: deterministic, and every prefix (e.g. a --train-limit) is class-balanced."""
    items = sorted(items, key=lambda it: (it.split, it.label, it.where))
    rank: dict[tuple[int, int], int] = {}
    keyed = []
    for it in items:
        r = rank.get((it.split, it.label), 0)
        rank[(it.split, it.label)] = r + 1
        keyed.append(((it.split, r, it.label), it))
    return [it for _, it in sorted(keyed, key=lambda kv: kv[0])]


def _decode(items: list[_Item], spec: Spec, source: Path) -> dict[str, np.ndarray]:
    c, h, w = spec.shape
    items = _interleave(items)
    out: dict[str, np.ndarray] = {}
    for si, split in enumerate(SPLITS):
        chosen = [it for it in items if it.split == si]
        x = np.empty((len(chosen), h, w, c), dtype=np.uint8)
        for i, it in enumerate(chosen):
            try:
                raw = it.read()
                with Image.open(io.BytesIO(raw)) as im:
                    rgb = im.convert("RGB")
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
                raise DataError(f"{it.where}: unreadable image ({type(e).__name__}: {e}). The "
                                f"file is damaged or not an image; replace it or the whole copy "
                                f"(the source was {source}).") from None
            if rgb.size != (w, h):
                raise DataError(f"{it.where}: image is {rgb.size[0]}x{rgb.size[1]} pixels, "
                                f"CIFAR-10 images are {w}x{h}. Replace the file or point --root "
                                "at a proper CIFAR-10 copy.")
            x[i] = np.asarray(rgb)
        out[f"x_{split}"] = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        out[f"y_{split}"] = np.array([it.label for it in chosen], dtype=np.int64)
    out["lossy"] = np.array(any(it.where.lower().endswith((".jpg", ".jpeg")) for it in items))
    return out


def decoded_path(key: str) -> Path:
    """Where the decoded copy of an image-folder source with cache key `key` is kept."""
    return cache_dir() / "decoded" / f"cifar10-jpeg-{DECODED_VERSION}-{key[:20]}.npz"


_DECODED_KEYS = ("x_train", "y_train", "x_test", "y_test", "lossy")


def _load_decoded(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in _DECODED_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged cache entry is rebuilt, never trusted
    ok = all(out[f"x_{s}"].dtype == np.uint8 and out[f"x_{s}"].ndim == 4
             and len(out[f"x_{s}"]) == len(out[f"y_{s}"]) for s in SPLITS)
    return out if ok else None


def _save_decoded(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        say(f"could not cache the decoded images in {path} ({e.strerror or e}); "
            "the next load will decode again")


def _image_arrays(source: Path, key: str, collect: Callable[[], list[_Item]], spec: Spec,
                  verify: bool, fmt: str, verified: str) -> Arrays:
    cached = decoded_path(key)
    arrays = _load_decoded(cached)
    if arrays is None:
        items = collect()
        if items:
            say(f"decoding {len(items)} images from {source} (once; the result is cached in "
                f"{cached.parent})")
        arrays = _decode(items, spec, source)
        _save_decoded(cached, arrays)
    else:
        verified += ", decoded copy from the cache"
    note = CIFAR_JPEG_NOTE if bool(arrays["lossy"]) else ""
    out = Arrays(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                 fmt, verified, note)
    _check_counts(out, spec, str(source), verify)
    return out


def read_image_tar(path: Path, spec: Spec, *, verify: bool = True) -> Arrays:
    """Read a tarball of train/<class>/*.jpg and test/<class>/*.jpg straight from the archive;
    with verify, check the known sha256 (for cifar10-jpeg.tar.gz), classes and counts."""
    sha = file_digest(path, "sha256")
    verified = "all images decoded"
    if verify and path.name == CIFAR_JPEG_TAR:
        if sha != CIFAR_JPEG_SHA256:
            raise DataError(f"{path}: checksum mismatch: sha256 is {sha[:16]}..., expected "
                            f"{CIFAR_JPEG_SHA256[:16]}.... The file is corrupt or not the known "
                            f"CIFAR-10 JPEG copy; replace it with a good copy, or rename it if "
                            f"it is a different image-folder archive.")
        verified = "sha256 of the archive verified, all images decoded"
    return _image_arrays(path, sha, lambda: _collect_tar(path, spec), spec, verify,
                         f"image folders in {path.name}", verified)


def read_image_dir(folder: Path, spec: Spec, *, verify: bool = True) -> Arrays:
    """Read extracted train/<class>/*.jpg and test/<class>/*.jpg folders; with verify, check
    classes and counts. The decoded cache is keyed by the files' names, sizes and mtimes."""
    return _image_arrays(folder, _dir_key(folder), lambda: _collect_dir(folder, spec), spec,
                         verify, "image folders train/ test/", "all images decoded")


def _check_counts(a: Arrays, spec: Spec, where: str, verify: bool) -> None:
    for split, y, n in (("train", a.y_train, spec.n_train), ("test", a.y_test, spec.n_test)):
        if len(y) == 0:
            raise DataError(f"{where}: no {split} images found (an image-folder copy needs "
                            f"{split}/<class>/*.jpg with the class folders "
                            f"{', '.join(spec.classes)}). Point --root at a complete CIFAR-10 "
                            "copy.")
        if not verify:
            continue
        counts = np.bincount(y, minlength=len(spec.classes))
        empty = [spec.classes[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise DataError(f"{where}: missing classes in the {split} split: no images for "
                            f"{', '.join(empty)}. The copy is incomplete; point --root at a "
                            "complete CIFAR-10 copy.")
        if len(y) != n:
            raise DataError(f"{where}: count mismatch: {len(y)} {split} images, CIFAR-10 has "
                            f"{n}. The copy is incomplete or not CIFAR-10; point --root at a "
                            "complete copy.")
