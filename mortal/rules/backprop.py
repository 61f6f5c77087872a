"""Backpropagation with softmax cross-entropy: the baseline every local rule is measured against.

The loop reads top to bottom: shuffle, forward, loss, backward, step; evaluate and checkpoint
once per epoch. bf16 autocast keeps fp32 master weights.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mortal.loop import autocast, batches, lr_factor, make_optimizer, set_lr
from mortal.runs import Run, check_finite


@dataclass
class Split:
    """In-memory float inputs and int labels for training and test."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@torch.no_grad()
def error_pct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str,
              batch_size: int = 2000) -> float:
    """Classification error (%) of `model` on (x, y), in batches, without autograd."""
    was_training = model.training
    model.eval()
    wrong = 0
    with autocast(x.device, dtype):
        for i in range(0, len(x), batch_size):
            wrong += (model(x[i : i + batch_size]).argmax(1) != y[i : i + batch_size]).sum().item()
    model.train(was_training)
    return 100.0 * wrong / len(x)


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
    dtype: str = "bfloat16",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train `model` by backprop on data.x_train; log per-epoch metrics; return final errors."""
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    steps_per_epoch = len(data.x_train) // batch_size
    total = epochs * steps_per_epoch
    start, state = run.resume_state()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    for epoch in range(start, epochs):
        model.train()
        bar = tqdm(batches(len(data.x_train), batch_size, seed, epoch), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not progress or not sys.stderr.isatty())
        loss_sum = torch.zeros(())
        with run.timed():
            for i, idx in enumerate(bar):
                step = epoch * steps_per_epoch + i
                set_lr(opt, lr * lr_factor(schedule, step, total))
                x, y = data.x_train[idx], data.y_train[idx]
                with autocast(x.device, dtype):
                    loss = F.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                check_finite({"loss": loss}, step, "the backprop network")
                if i % 100 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
        test_err = error_pct(model, data.x_test, data.y_test, dtype)
        run.log(epoch=epoch + 1, train_loss=float(loss_sum) / steps_per_epoch,
                test_error_pct=test_err, seconds=run.train_seconds)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {float(loss_sum) / steps_per_epoch:.4f}"
                       f"  test error {test_err:.2f} %  ({run.train_seconds:.0f} s)")
        run.save(epoch + 1, {"model": model.state_dict(), "optimizer": opt.state_dict()})
    return {
        "test_error_pct": error_pct(model, data.x_test, data.y_test, dtype),
        "train_error_pct": error_pct(model, data.x_train, data.y_train, dtype),
    }
