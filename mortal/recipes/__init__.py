"""Recipes: one small file per paper experiment, with the paper's settings and target number.

Recipes are made by name from a registry (`get`), all with one shape: a config dataclass and a
`train(cfg, run) -> results` function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mortal.config import ConfigError


@dataclass(frozen=True)
class Recipe:
    """A named experiment: what the paper did, what it got, and how to run it here."""

    name: str
    paper: str
    setting: str
    dataset: str
    paper_test_error_pct: float | None
    config: type
    train: Callable[[Any, Any], dict[str, Any]]
    notes: str = ""
    # keys added after the recipe's first runs whose default now differs from what the code did
    # before they existed: runs made before read (and resume) as these values, not the default
    before: dict[str, Any] = field(default_factory=dict)

    def past_defaults(self) -> dict[str, Any]:
        """What a run's config means for a key it lacks: `before`, else today's default."""
        from mortal import config as configs

        return {**configs.to_dict(self.config()), **self.before}


REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add a recipe to the registry (each recipe module calls this once at import)."""
    REGISTRY[recipe.name] = recipe
    return recipe


def get(name: str) -> Recipe:
    """The recipe called `name`, or a ConfigError listing the known ones."""
    _load_all()
    if name not in REGISTRY:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def all_recipes() -> list[Recipe]:
    """Every registered recipe, sorted by name."""
    _load_all()
    return [REGISTRY[k] for k in sorted(REGISTRY)]


def _load_all() -> None:
    from mortal.recipes import (  # noqa: F401
        bp_mnist_mlp,
        dbn_denoise_mnist,
        dbn_mnist,
        distill_mnist,
        distill_omitted_mnist,
        ff_cifar10,
        ff_local_mnist,
        ff_recurrent_mnist,
        ff_sleep_mnist,
        ff_supervised_mnist,
        ff_unsupervised_mnist,
        glom_fashion,
        glom_mnist,
        glom_parts,
        glom_parts_votes,
        grbm_mnist,
        mortal_device_mnist,
        mortal_transfer_mnist,
        noisy_labels_mnist,
        rbm_mnist,
    )
