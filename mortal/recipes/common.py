"""Helpers recipes share: load a dataset as float tensors, fill the standard results keys."""

from __future__ import annotations

from typing import Any

import torch

from mortal import data as datasets
from mortal.loop import flat_float
from mortal.rules.backprop import Split


def load_split(name: str, root: str | None, device: torch.device, limit: int = 0) -> Split:
    """Dataset `name` as flat float tensors in [0, 1] on `device`; `limit` > 0 keeps the first
    `limit` training examples (for quick runs and tests)."""
    ds = datasets.load(name, root=root or None)
    x_train, y_train = ds.x_train, ds.y_train
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    return Split(
        x_train=flat_float(x_train, device),
        y_train=y_train.to(device),
        x_test=flat_float(ds.x_test, device),
        y_test=ds.y_test.to(device),
    )


# Config keys that make another experiment: a run that changes one (a narrower net, fewer
# epochs, a subset) gets no paper number beside its own.
SETTING_KEYS = ("widths", "local_layers", "epochs", "train_limit")


def paper_setting(recipe: Any, cfg: Any) -> bool:
    """Whether `cfg` runs the recipe's paper experiment: its dataset, all the training data and
    the defaults of SETTING_KEYS (rule settings, seeds and dtype may differ)."""
    defaults = recipe.config()
    return (getattr(cfg, "dataset", recipe.dataset) == recipe.dataset
            and not getattr(cfg, "train_limit", 0)
            and all(getattr(cfg, k) == getattr(defaults, k) for k in SETTING_KEYS
                    if hasattr(cfg, k) and hasattr(defaults, k)))


def standard_results(recipe: Any, cfg: Any, run: Any, n_train: int, test_error_pct: float,
                     **extra: Any) -> dict[str, Any]:
    """The keys every results.json has, then recipe-specific extras."""
    seconds = run.train_seconds
    dataset = getattr(cfg, "dataset", recipe.dataset)
    same_setting = paper_setting(recipe, cfg)
    return {
        "recipe": recipe.name,
        "dataset": dataset,
        "test_error_pct": round(test_error_pct, 4),
        # The paper's number is only comparable on the paper's dataset with all training data.
        "paper_test_error_pct": recipe.paper_test_error_pct if same_setting else None,
        "epochs": cfg.epochs,
        "train_seconds": round(seconds, 2),
        # None, not 0, when the headline's stage ran no epochs (e.g. dbn-mnist, updown_epochs=0)
        "examples_per_second": (round(n_train * cfg.epochs / seconds, 1)
                                if seconds and cfg.epochs else None),
        **extra,
    }
