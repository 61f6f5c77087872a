"""Small pieces every training loop shares: seeding, batching, dtype, input preparation."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
# short names for metric and benchmark keys, e.g. "bf16_gemm_gflops"
DTYPE_TAGS = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so that the same seed and config give the same metrics."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device_of(name: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls run in hardware on `device`: AMX or AVX512-BF16 on a CPU, bf16
    support on CUDA. Elsewhere torch emulates bf16, at about 1 % of the fp32 matmul's speed."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def resolve_dtype(name: str, device: torch.device | str = "auto") -> str:
    """A config's compute dtype: 'auto' becomes 'bfloat16' where bf16 matmuls run in hardware
    and 'float32' elsewhere; any other name is returned as it is."""
    if name != "auto":
        return name
    dev = device_of(device) if isinstance(device, str) else device
    return "bfloat16" if native_bf16(dev) else "float32"


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast with fp32 master weights; a no-op for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def epoch_order(n: int, seed: int, epoch: int, device: torch.device | None = None) -> torch.Tensor:
    """A permutation of range(n) that depends only on (seed, epoch), so resumed runs see the
    same batches as uninterrupted ones."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm if device is None else perm.to(device)


def batches(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Index tensors of one shuffled epoch; the last partial batch is dropped."""
    perm = epoch_order(n, seed, epoch)
    for i in range(0, n - batch_size + 1, batch_size):
        yield perm[i : i + batch_size]


def flat_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 (N, C*H*W) in [0, 1] on `device`."""
    return x.reshape(x.shape[0], -1).to(device=device, dtype=torch.float32).div_(255.0)


def make_optimizer(
    name: str, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """'adam', 'adamw' (decoupled weight decay) or 'sgd' (with momentum), by name, so configs
    can choose.

    The fused kernels update each tensor in one pass over memory; on a CPU the default
    per-op implementation of Adam costs as much time as the matmuls of a 2000x2000 layer."""
    if name == "adam":
        cls, kw = torch.optim.Adam, {"lr": lr, "weight_decay": weight_decay}
    elif name == "adamw":
        cls, kw = torch.optim.AdamW, {"lr": lr, "weight_decay": weight_decay}
    elif name == "sgd":
        cls, kw = torch.optim.SGD, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
    else:
        raise ValueError(f"unknown optimizer {name!r} (use adam, adamw or sgd)")
    params = list(params)
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device or dtype
        return cls(params, **kw)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate: 'constant', 'linear' decay to 0, or 'cosine'."""
    frac = min(step / max(total, 1), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - frac
    if schedule == "cosine":
        return 0.5 * (1.0 + float(np.cos(np.pi * frac)))
    raise ValueError(f"unknown schedule {schedule!r} (use constant, linear or cosine)")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's learning rate."""
    for group in opt.param_groups:
        group["lr"] = lr
