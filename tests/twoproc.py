"""Two worker processes over gloo on localhost, as the data-parallel tests use them: start the
workers, compute the single-process reference meanwhile, then join them. A worker ends with
`leave(out)`: it leaves the process group with the others, marks that it finished, and exits
without the interpreter's teardown (CI once saw a worker die of SIGABRT, "terminate called
without an active exception", with no traceback: gloo can do that when its threads outlive
Python's)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import torch

from mortal import distributed

from .conftest import REPO

T = TypeVar("T")


def start(module: str, out: Path, n: int = 2) -> list[subprocess.Popen]:
    """Launch `python -m module out` as ranks 0..n-1 of one gloo group."""
    port = distributed.free_port()
    return [subprocess.Popen([sys.executable, "-m", module, str(out)], cwd=REPO,
                             env=distributed.local_env(r, n, port), stderr=subprocess.PIPE,
                             text=True) for r in range(n)]


def one_thread(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) with one torch thread, as each worker runs: the same kernels, the same bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def join(procs: list[subprocess.Popen], out: Path, timeout: float = 120) -> None:
    """Wait for every worker; each must exit 0 after marking that it finished."""
    for r, p in enumerate(procs):
        _, err = p.communicate(timeout=timeout)
        done = (out / f"done{r}.txt").exists()
        assert p.returncode == 0, f"rank {r} exited {p.returncode} (work finished: {done}): {err}"
        assert done, f"rank {r} exited without finishing: {err}"


def leave(out: Path) -> NoReturn:
    """End a worker: leave the group with the others, mark it done, exit at once."""
    r = distributed.rank()
    distributed.shutdown()
    (out / f"done{r}.txt").write_text("left the group")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
