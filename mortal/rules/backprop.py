"""Backpropagation with softmax cross-entropy: the baseline every local rule is measured against.

The loop reads top to bottom: shuffle, (augment), forward, loss, backward, step, (max-norm);
evaluate and checkpoint once per epoch. bf16 autocast keeps fp32 master weights. Hooks let other
rules reuse the loop without copying it: `loss_fn` swaps the objective (distillation's soft
targets), `augment` transforms each batch (jitter), and `val` picks the epoch to keep.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mortal import distributed
from mortal.config import ConfigError
from mortal.loop import autocast, batches, lr_factor, make_optimizer, resolve_dtype, set_lr
from mortal.runs import Run, check_finite

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, batch indices) -> loss


@dataclass
class Split:
    """In-memory float inputs and int labels for training and test (and optional validation)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, dtype: str, batch_size: int = 2000
              ) -> torch.Tensor:
    """The model's fp32 logits on `x`, in eval mode and in batches, without autograd."""
    was_training = model.training
    model.eval()
    out = []
    with autocast(x.device, dtype):
        for i in range(0, len(x), batch_size):
            out.append(model(x[i : i + batch_size]).float())
    model.train(was_training)
    return torch.cat(out)


def error_pct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str,
              batch_size: int = 2000) -> float:
    """Classification error (%) of `model` on (x, y)."""
    return 100.0 * (logits_of(model, x, dtype, batch_size).argmax(1) != y).float().mean().item()


@torch.no_grad()
def max_norm_(model: nn.Module, c: float) -> None:
    """Rescale every unit's incoming weight vector (rows of each Linear) to L2 norm <= c: the
    "weight constraints" of Hinton et al.'s dropout nets."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.copy_(torch.renorm(m.weight, 2, 0, c))


def train(
    model: nn.Module,
    data: Split,
    run: Run,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    dtype: str = "auto",
    seed: int = 0,
    progress: bool = True,
    loss_fn: LossFn | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_norm: float = 0.0,
    min_steps: int = 0,
) -> dict[str, float]:
    """Train `model` by backprop on data.x_train; log per-epoch metrics; return final errors.

    With `data.x_val`, the weights kept are those of the epoch with the lowest validation error
    (its labels may be as noisy as the training labels: under symmetric noise the noisy error is
    an increasing affine function of the true one). `min_steps` raises the number of epochs of a
    small training set so it still gets that many updates.

    Data parallel under torch.distributed: each process trains on its slice of every batch,
    gradients are all-reduced as autograd produces them, rank 0 evaluates."""
    n = len(data.x_train)
    dtype = resolve_dtype(dtype, data.x_train.device)
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    test_every = max(1, epochs // 50)  # at most ~50 test evaluations, however small the set
    if loss_fn is None:
        def loss_fn(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, data.y_train[idx])
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    if distributed.pipeline_stages():
        raise ConfigError("--pipeline is for FF layer stacks; backprop needs the whole net in "
                          "every process: use --nproc N (data parallel)")
    averager = distributed.GradAverager() if distributed.data_parallel() else None
    sync_grads = averager.hook(list(model.parameters())) if averager else None
    constrained = [m for m in model.modules() if hasattr(m, "constrain_")]
    select = data.x_val is not None
    best = {"val_error_pct": float("inf"), "epoch": 0, "model": None}
    start, state = run.resume_state()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        best = state["best"]
    saved_at = time.perf_counter()
    for epoch in range(start, epochs):
        model.train()
        bar = tqdm(batches(n, batch_size, seed, epoch), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not progress or not sys.stderr.isatty())
        loss_sum = torch.zeros(())
        with run.timed():
            for i, idx in enumerate(bar):
                step = epoch * steps_per_epoch + i
                set_lr(opt, lr * lr_factor(schedule, step, total))
                if sync_grads is not None:
                    idx = distributed.shard(idx)  # this process's slice of the batch
                x = data.x_train[idx]
                if augment is not None:
                    x = augment(x)
                with autocast(x.device, dtype):
                    logits = model(x)
                loss = loss_fn(logits.float(), idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if sync_grads is not None:
                    sync_grads()
                opt.step()
                if max_norm:
                    max_norm_(model, max_norm)
                for m in constrained:  # layers that project their weights (e.g. devices)
                    m.constrain_()
                loss_sum += loss.detach()
                check_finite({"loss": loss}, step, "the backprop network")
                if i % 100 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
        if averager is not None:
            loss_sum = distributed.all_sum(loss_sum) / distributed.world()
        row = {"epoch": epoch + 1, "train_loss": float(loss_sum) / steps_per_epoch}
        if (epoch + 1) % test_every == 0 or epoch + 1 == epochs:
            row["test_error_pct"] = distributed.from_main(
                lambda: error_pct(model, data.x_test, data.y_test, dtype))
        if select:
            row["val_error_pct"] = distributed.from_main(
                lambda: error_pct(model, data.x_val, data.y_val, dtype))
            if row["val_error_pct"] < best["val_error_pct"]:
                best = {"val_error_pct": row["val_error_pct"], "epoch": epoch + 1,
                        "model": copy.deepcopy(model.state_dict())}
        run.log(**row, seconds=run.train_seconds)
        if progress and (epochs <= 100 or (epoch + 1) % 10 == 0 or epoch + 1 == epochs):
            tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f}"
                       + (f"  test error {row['test_error_pct']:.2f} %"
                          if "test_error_pct" in row else "")
                       + (f"  val error {row['val_error_pct']:.2f} %" if select else "")
                       + f"  ({run.train_seconds:.0f} s)")
        # Checkpoint after the first and last epochs and at most every 30 s between: tiny
        # epochs (small training sets) would otherwise spend their time writing files.
        if epoch == start or epoch + 1 == epochs or time.perf_counter() - saved_at > 30:
            run.save(epoch + 1, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "best": best})
            saved_at = time.perf_counter()
    if averager is not None:
        averager.close()
    out: dict[str, float] = {}
    if select and best["model"] is not None:
        model.load_state_dict(best["model"])
        out = {"best_epoch": best["epoch"], "val_error_pct": best["val_error_pct"]}
    return distributed.from_main(lambda: {
        "test_error_pct": error_pct(model, data.x_test, data.y_test, dtype),
        "train_error_pct": error_pct(model, data.x_train, data.y_train, dtype),
        "epochs_run": epochs,
        **out,
    })
