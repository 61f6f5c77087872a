"""bp-mnist-mlp: the permutation-invariant backprop baseline of the Forward-Forward paper.

Hinton (2022), "The Forward-Forward Algorithm: Some Preliminary Investigations", §3.3: a net of
4 hidden layers of 2000 ReLUs trained by backprop gets about 1.4 % test error on MNIST
("backpropagation takes about 20 epochs to get similar test performance" to FF's 1.36 %).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mortal.arch.dense import MLP
from mortal.config import check
from mortal.loop import device_of, resolve_dtype, seed_everything
from mortal.recipes import Recipe, register
from mortal.recipes.common import load_split, standard_results
from mortal.rules import backprop


@dataclass
class Config:
    """Paper net and a standard backprop setting; every key can be changed with --set."""

    dataset: str = "mnist"
    data_root: str = ""
    widths: tuple[int, ...] = (2000, 2000, 2000, 2000)
    epochs: int = 20
    batch_size: int = 100
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    dropout: float = 0.0
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bf16 if native
    device: str = "auto"
    seed: int = 0
    train_limit: int = 0

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype, self.device)

    def validate(self) -> list[str]:
        problems: list[str] = []
        check(self.epochs >= 1, "epochs must be >= 1", problems)
        check(self.batch_size >= 1, "batch_size must be >= 1", problems)
        check(self.lr > 0, "lr must be > 0", problems)
        check(0 <= self.dropout < 1, "dropout must be in [0, 1)", problems)
        check(len(self.widths) >= 1 and min(self.widths) >= 1, "widths must be positive", problems)
        check(self.train_limit >= 0, "train_limit must be >= 0", problems)
        return problems


def train(cfg: Config, run) -> dict:
    """Train the MLP by backprop and report its test error beside the paper's."""
    seed_everything(cfg.seed)
    device = device_of(cfg.device)
    data = load_split(cfg.dataset, cfg.data_root, device, cfg.train_limit)
    model = MLP(data.x_train.shape[1], cfg.widths, 10, cfg.dropout).to(device)
    final = backprop.train(
        model, data, run, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, schedule=cfg.schedule,
        dtype=cfg.dtype, seed=cfg.seed, progress=not run.quiet,
    )
    return standard_results(RECIPE, cfg, run, len(data.x_train), final["test_error_pct"],
                            train_error_pct=round(final["train_error_pct"], 4), dtype=cfg.dtype)


RECIPE = register(Recipe(
    name="bp-mnist-mlp",
    paper="Hinton 2022, The Forward-Forward Algorithm, §3.3 (backprop baseline)",
    setting="MNIST, permutation-invariant, 4x2000 ReLU MLP, softmax cross-entropy, backprop",
    dataset="mnist",
    paper_test_error_pct=1.4,
    config=Config,
    train=train,
))
