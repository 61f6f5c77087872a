"""ff-supervised-mnist: Forward-Forward with the label in the image, §3.3 of Hinton (2022).

Paper: 4 hidden layers of 2000 ReLUs, 60 epochs, the label as a one-hot in the first 10 pixels,
negatives = the same image with a wrong label; classify by the goodness accumulated over all
but the first hidden layer, one run per label: 1.36 % test error. (Hinton's released Matlab
code: 1.47 %; loeweX's PyTorch port, 3x1000 for 100 epochs: 1.45 %.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mortal.arch.dense import dense_stack
from mortal.config import check
from mortal.loop import device_of, resolve_dtype, seed_everything
from mortal.recipes import Recipe, register
from mortal.recipes.common import load_split, standard_results
from mortal.rules import ff


@dataclass
class Config:
    """The paper's net (4x2000 ReLU), label embedding and 60 epochs. Where the paper is silent or
    its settings learned slowly here, the choices below were measured (docs/results.md): the
    pairwise goodness loss at temperature 5, Adam, batches of 1000, input dropout 0.2 (the
    positive and negative copy of an image share the mask), hard negatives drawn from the
    model's own predictions, refreshed every 2 epochs."""

    dataset: str = "mnist"
    data_root: str = ""
    widths: tuple[int, ...] = (2000, 2000, 2000, 2000)
    epochs: int = 60
    batch_size: int = 1000
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 8e-4
    momentum: float = 0.9
    weight_decay: float = 3e-4
    schedule: Literal["cooldown", "constant", "linear", "cosine"] = "cooldown"
    goodness: Literal["sumsq", "neg_sumsq", "sum", "sumsq_sum"] = "sumsq"
    loss: Literal["threshold", "pairwise"] = "pairwise"
    threshold: float = 1.0
    temperature: float = 5.0
    peer_weight: float = 0.03
    peer_momentum: float = 0.9
    activation: Literal["relu", "relu_st"] = "relu_st"
    init: Literal["fan_out", "default"] = "fan_out"
    label_value: float = 1.0
    hard_negatives_every: int = 2
    hard_negatives_from: Literal["online", "softmax", "goodness"] = "softmax"
    online_softmax_lr: float = 0.1
    hard_negatives_mix: float = 1.0
    weight_average: float = 0.0  # EMA decay of the weights used to classify; 0: as trained
    dropout: float = 0.0  # on the activity each layer passes up (pairs share masks)
    input_dropout: float = 0.2  # on the image pixels, before the label goes in
    eval_every: int = 10
    softmax_epochs: int = 20
    softmax_lr: float = 3e-3
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bf16 if native
    device: str = "auto"
    seed: int = 0
    train_limit: int = 0

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype, self.device)

    @property
    def n_layers(self) -> int:
        """Hidden layers of the net (recipes with other architectures override it)."""
        return len(self.widths)

    def validate(self) -> list[str]:
        p: list[str] = []
        check(self.epochs >= 1, "epochs must be >= 1", p)
        check(self.batch_size >= 1, "batch_size must be >= 1", p)
        check(self.lr > 0, "lr must be > 0", p)
        check(0 <= self.weight_average < 1, "weight_average is an EMA decay in [0, 1)", p)
        check(self.n_layers >= 2, "FF classification skips the first layer: need >= 2 layers",
              p)
        check(self.temperature > 0, "temperature must be > 0", p)
        check(0 <= self.peer_momentum < 1, "peer_momentum must be in [0, 1)", p)
        check(self.eval_every >= 1, "eval_every must be >= 1", p)
        check(self.train_limit >= 0, "train_limit must be >= 0", p)
        check(0 <= self.hard_negatives_mix <= 1, "hard_negatives_mix must be in [0, 1]", p)
        check(self.hard_negatives_every >= 0, "hard_negatives_every must be >= 0", p)
        check(0 <= self.dropout < 1 and 0 <= self.input_dropout < 1,
              "dropout and input_dropout are rates in [0, 1)", p)
        return p


def rule(cfg: Config) -> ff.FFRule:
    """The FF rule's settings from this recipe's config (also used by the FF recipes that
    build on it)."""
    return ff.FFRule(goodness=cfg.goodness, loss=cfg.loss, threshold=cfg.threshold,
                     temperature=cfg.temperature, peer_weight=cfg.peer_weight,
                     peer_momentum=cfg.peer_momentum, optimizer=cfg.optimizer, lr=cfg.lr,
                     momentum=cfg.momentum, weight_decay=cfg.weight_decay, dtype=cfg.dtype,
                     dropout=cfg.dropout)


def build(cfg: Config, d_in: int) -> ff.FFNet:
    """The FF network of this recipe (also used by the benchmark)."""
    return ff.FFNet(dense_stack(d_in, cfg.widths, cfg.activation, cfg.init), rule(cfg))


def training(cfg: Config) -> ff.FFTraining:
    """The loop settings of this recipe."""
    return ff.FFTraining(epochs=cfg.epochs, batch_size=cfg.batch_size, schedule=cfg.schedule,
                         label_value=cfg.label_value,
                         hard_negatives_every=cfg.hard_negatives_every,
                         hard_negatives_from=cfg.hard_negatives_from,
                         online_softmax_lr=cfg.online_softmax_lr,
                         hard_negatives_mix=cfg.hard_negatives_mix,
                         eval_every=cfg.eval_every, softmax_epochs=cfg.softmax_epochs,
                         softmax_lr=cfg.softmax_lr, weight_average=cfg.weight_average,
                         input_dropout=cfg.input_dropout, seed=cfg.seed)


def train(cfg: Config, run) -> dict:
    """Train by FF and report both classification modes beside the paper."""
    seed_everything(cfg.seed)
    device = device_of(cfg.device)
    data = load_split(cfg.dataset, cfg.data_root, device, cfg.train_limit)
    net = build(cfg, data.x_train.shape[1]).to(device)
    out = ff.train(net, data.x_train, data.y_train, data.x_test, data.y_test, training(cfg), run,
                   progress=not run.quiet)
    best = min(out["test_error_goodness_pct"], out["test_error_softmax_pct"])
    return standard_results(
        RECIPE, cfg, run, len(data.x_train), best,
        **{k: round(v, 4) for k, v in out.items()},
        test_error_note="test_error_pct is the better of the two modes: goodness (a), softmax (b)",
        paper_matlab_test_error_pct=1.47, loewex_pytorch_test_error_pct=1.45, dtype=cfg.dtype,
    )


RECIPE = register(Recipe(
    name="ff-supervised-mnist",
    paper="Hinton 2022, The Forward-Forward Algorithm, §3.3",
    setting="MNIST, permutation-invariant, 4x2000 ReLU, label in first 10 pixels, 60 epochs",
    dataset="mnist",
    paper_test_error_pct=1.36,
    config=Config,
    train=train,
    before={"input_dropout": 0.0},  # added 2026-11-30 (a63ef06) as 0; 0.2 since e1693f1
))
