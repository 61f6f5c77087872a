"""glom-fashion: glom-mnist's GLOM and linear probe on Fashion-MNIST (no published number)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mortal.recipes import Recipe, register
from mortal.recipes.glom_mnist import Config as MnistConfig
from mortal.recipes.glom_mnist import train_glom


@dataclass
class Config(MnistConfig):
    """glom-mnist's settings on Fashion-MNIST."""

    dataset: str = "fashion-mnist"


def train(cfg: Config, run: Any) -> dict[str, Any]:
    """glom-fashion: see glom_mnist.train_glom."""
    return train_glom(cfg, run, RECIPE)


RECIPE = register(Recipe(
    name="glom-fashion",
    paper="Hinton 2021 (GLOM); no published GLOM number on Fashion-MNIST",
    setting="Fashion-MNIST, 7x7 columns, 4 levels, mode=local; linear probe on the top level",
    dataset="fashion-mnist",
    paper_test_error_pct=None,
    config=Config,
    train=train,
))
