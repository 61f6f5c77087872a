"""Config keys and values are checked before any training starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from mortal import config as C


@dataclass
class Cfg:
    epochs: int = 3
    lr: float = 0.1
    widths: tuple[int, ...] = (10, 20)
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    name: str = "x"
    cap: float | None = None

    def validate(self) -> list[str]:
        problems: list[str] = []
        C.check(self.epochs >= 1, "epochs must be >= 1", problems)
        return problems


def test_defaults_and_coercion():
    cfg = C.build(Cfg, C.parse_sets(["epochs=5", "lr=1e-3", "widths=4,5,6", "mode=b",
                                     "flag=true", "cap=none"]))
    assert (cfg.epochs, cfg.lr, cfg.widths, cfg.mode, cfg.flag, cfg.cap) == (
        5, 1e-3, (4, 5, 6), "b", True, None)
    assert C.build(Cfg, {"cap": "2.5"}).cap == 2.5
    assert C.build(Cfg, {}) == Cfg()


def test_unknown_key_lists_valid_keys():
    with pytest.raises(C.ConfigError) as e:
        C.build(Cfg, {"epoch": "3"})
    msg = str(e.value)
    assert "epoch" in msg and "epochs (int) = 3" in msg and "widths" in msg


@pytest.mark.parametrize("key,value", [("epochs", "three"), ("epochs", "2.5"), ("lr", "fast"),
                                       ("mode", "c"), ("flag", "maybe"), ("widths", "1,x")])
def test_bad_values_rejected(key, value):
    with pytest.raises(C.ConfigError, match=key):
        C.build(Cfg, {key: value})


def test_validate_runs():
    with pytest.raises(C.ConfigError, match="epochs must be >= 1"):
        C.build(Cfg, {"epochs": "0"})


def test_set_syntax():
    with pytest.raises(C.ConfigError, match="key=value"):
        C.parse_sets(["epochs"])
    assert C.parse_sets(["batch-size=3"]) == {"batch_size": "3"}


def test_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('epochs = 7\nwidths = [1, 2]\n[config]\nlr = 0.5\n')
    cfg = C.build(Cfg, C.load_toml(p))
    assert (cfg.epochs, cfg.widths, cfg.lr) == (7, (1, 2), 0.5)
    p.write_text("epochs = = 3")
    with pytest.raises(C.ConfigError, match="not valid TOML"):
        C.load_toml(p)
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load_toml(tmp_path / "missing.toml")


def test_paper_number_only_beside_the_paper_setting():
    """results.json carries the paper's number only when the run is the paper's experiment: a
    narrower net, fewer epochs or a subset is another experiment; a seed or dtype is not."""
    from mortal.recipes import get
    from mortal.recipes.common import paper_setting

    r = get("ff-unsupervised-mnist")
    assert paper_setting(r, r.config())
    for same in ({"seed": 3}, {"dtype": "float32"}, {"loss": "pairwise"}):
        assert paper_setting(r, C.build(r.config, same)), same
    for other in ({"widths": "1000,1000,1000,1000"}, {"epochs": 10}, {"train_limit": 500}):
        assert not paper_setting(r, C.build(r.config, other)), other
