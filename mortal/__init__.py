"""mortal: neural networks that learn without end-to-end backpropagation."""

from __future__ import annotations

import ctypes
import os
import sys

__version__ = "0.1.0"


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing large blocks back to
    the OS (mmap threshold and trim threshold at 1 GiB). A training step frees and reallocates
    the same multi-MB activations every step; returned to the OS, each one comes back as fresh
    pages, and the page faults cost more than the matmuls at these sizes on a VM (measured:
    ~4,800 faults and +45 % time per FF step at batch 1000). Set MORTAL_MALLOC=default to leave
    malloc alone. Returns whether the settings took."""
    if os.environ.get("MORTAL_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))


MALLOC_TUNED = keep_freed_memory()
