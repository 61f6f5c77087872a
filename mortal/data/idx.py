"""The idx format of MNIST and Fashion-MNIST: parse the header ourselves, check every field, and
compare the decompressed bytes with the known sha256, so a damaged file is named, never used."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from mortal.data.common import Arrays, DataError, refetch_hint, sha256_bytes
from mortal.data.specs import IDX_FILES, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, Spec

IMAGES_MAGIC = 0x00000803   # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801   # unsigned bytes, 1 dimension
GZIP_MAGIC = b"\x1f\x8b"


def find_file(folder: Path, stem: str) -> Path | None:
    """The idx file `stem` in `folder`, uncompressed or .gz (uncompressed preferred)."""
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def present_files(folder: Path) -> dict[str, Path | None]:
    """Each canonical idx file name mapped to its path in `folder`, or None when absent."""
    return {stem: find_file(folder, stem) for stem in IDX_FILES}


def read_raw(path: Path, name: str = "mnist") -> bytes:
    """The decompressed bytes of an idx file (gzip detected by content, not by name)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}). Check that the file exists "
                        "and is readable.") from None
    if data[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip file ({e}); the download was probably cut "
                            f"short or damaged. {refetch_hint(name)}") from None
    if path.suffix == ".gz" and data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: corrupt gzip file (it does not start with the gzip signature "
                        f"and is not a raw idx file either). {refetch_hint(name)}")
    return data


def parse_idx(data: bytes, path: Path, magic: int, name: str = "mnist") -> np.ndarray:
    """Check an idx header (magic, dims) against the data length; return the uint8 array."""
    what = "images" if magic == IMAGES_MAGIC else "labels"
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise DataError(f"{path}: truncated file: only {len(data)} bytes, shorter than an idx "
                        f"header. {refetch_hint(name)}")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        looks = " (the data looks gzip-compressed: give it a .gz name)" \
            if data[:2] == GZIP_MAGIC else ""
        other = {IMAGES_MAGIC: "an images file", LABELS_MAGIC: "a labels file"}.get(got)
        swap = f"; it is {other}, so the file names may be swapped" if other else ""
        raise DataError(f"{path}: wrong idx magic number 0x{got:08x}, expected 0x{magic:08x} "
                        f"for an idx {what} file{looks}{swap}. The file is not a valid "
                        f"{what} file. {refetch_hint(name)}")
    if len(data) < header:
        raise DataError(f"{path}: truncated file: {len(data)} bytes, shorter than its "
                        f"{header}-byte header. {refetch_hint(name)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    need = int(np.prod(dims, dtype=np.int64))
    have = len(data) - header
    if have < need:
        raise DataError(f"{path}: truncated file: the header promises {dims[0]} {what} "
                        f"({need} data bytes) but only {have} bytes follow, so the file was "
                        f"cut short. {refetch_hint(name)}")
    if have > need:
        raise DataError(f"{path}: wrong file size: the header promises {need} data bytes but "
                        f"{have} follow ({have - need} extra). {refetch_hint(name)}")
    return np.frombuffer(data, dtype=np.uint8, count=need, offset=header).reshape(dims)


def read_idx_dataset(folder: Path, spec: Spec, *, verify: bool = True) -> Arrays:
    """Read and check the four idx files in `folder`; with verify, also compare each file's
    decompressed sha256 with the known value (off only for tiny test fixtures)."""
    files = present_files(folder)
    missing = [stem for stem, p in files.items() if p is None]
    if missing:
        raise missing_error(folder, spec, missing)
    out: dict[str, np.ndarray] = {}
    compressed = 0
    for img_stem, lab_stem in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        img_path, lab_path = files[img_stem], files[lab_stem]
        assert img_path is not None and lab_path is not None
        raw_img = read_raw(img_path, spec.name)
        images = parse_idx(raw_img, img_path, IMAGES_MAGIC, spec.name)
        _, h, w = spec.shape
        if images.shape[1:] != (h, w):
            raise DataError(f"{img_path}: images are {images.shape[1]}x{images.shape[2]} pixels "
                            f"but {spec.name} images are {h}x{w}; this is not a {spec.title} "
                            f"file. {refetch_hint(spec.name)}")
        raw_lab = read_raw(lab_path, spec.name)
        labels = parse_idx(raw_lab, lab_path, LABELS_MAGIC, spec.name)
        if len(labels) != len(images):
            raise DataError(f"{lab_path}: count mismatch: it holds {len(labels)} labels but "
                            f"{img_path.name} holds {len(images)} images; the two files do not "
                            f"belong together (one is truncated or from another release). "
                            f"{refetch_hint(spec.name)}")
        bad = labels >= len(spec.classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{lab_path}: label out of range: label {int(labels[i])} at index "
                            f"{i}, but {spec.name} labels are 0..{len(spec.classes) - 1}. "
                            f"{refetch_hint(spec.name)}")
        if verify:
            for stem, path, raw in ((img_stem, img_path, raw_img), (lab_stem, lab_path, raw_lab)):
                check_sha256(path, raw, spec.sha256[stem], spec)
        compressed += (img_path.suffix == ".gz") + (lab_path.suffix == ".gz")
        prefix = "train" if img_stem == TRAIN_IMAGES else "test"
        out[f"x_{prefix}"] = images.reshape(len(images), 1, h, w).copy()
        out[f"y_{prefix}"] = labels.astype(np.int64)
    fmt = "idx, gzip" if compressed == 4 else "idx, raw" if compressed == 0 else "idx, gzip+raw"
    verified = "sha256 of the 4 decompressed files verified" if verify else "not verified"
    return Arrays(fmt=fmt, verified=verified, **out)


def check_sha256(path: Path, raw: bytes, expected: str, spec: Spec) -> None:
    """Raise a checksum DataError unless sha256(raw) == expected."""
    got = sha256_bytes(raw)
    if got != expected:
        raise DataError(f"{path}: checksum mismatch: the sha256 of its decompressed data is "
                        f"{got[:16]}..., expected {expected[:16]}.... The file is corrupt or not "
                        f"the canonical {spec.title} file; re-fetch it with `mortal data fetch "
                        f"{spec.name}` (delete the bad file first if it is not in the cache), "
                        "or point --root at a good copy.")


def missing_error(folder: Path, spec: Spec, missing: list[str]) -> DataError:
    """The DataError for idx files absent from a folder that holds some of them."""
    paths = ", ".join(str(folder / m) for m in missing)
    return DataError(f"{paths}: missing file (neither raw nor .gz found). The {spec.name} folder "
                     f"{folder} must hold all four idx files ({', '.join(IDX_FILES)}, each raw "
                     f"or .gz). Copy the missing file there, or run `mortal data fetch "
                     f"{spec.name}` to get a complete copy in the cache.")
