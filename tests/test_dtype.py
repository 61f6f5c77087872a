"""dtype=auto: bf16 only where the matmul unit has it, so a CPU without AMX or AVX512-BF16
(where torch emulates bf16 at about 1 % of fp32's speed) trains in fp32 instead."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mortal import cli
from mortal import config as configs
from mortal.loop import native_bf16, resolve_dtype
from mortal.recipes import all_recipes
from mortal.rules import boltzmann, ff, glom

from .conftest import needs_mnist


def capabilities(monkeypatch, **flags: bool) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(flags))


def test_auto_follows_the_matmul_unit(monkeypatch):
    for flags, want in [({"amx_bf16": True}, "bfloat16"), ({"avx512_bf16": True}, "bfloat16"),
                        ({"avx2": True, "avx512_f": True}, "float32"), ({}, "float32")]:
        capabilities(monkeypatch, **flags)
        assert native_bf16("cpu") == (want == "bfloat16")
        assert resolve_dtype("auto", "cpu") == want, flags
        for explicit in ("bfloat16", "float32"):  # an explicit choice is never changed
            assert resolve_dtype(explicit, "cpu") == explicit


def test_every_recipe_and_rule_resolves_auto(monkeypatch):
    capabilities(monkeypatch, avx2=True)
    autos = []
    for r in all_recipes():
        fields = {f.name: f.default for f in dataclasses.fields(r.config)}
        if "dtype" not in fields:
            continue
        assert fields["dtype"] in ("auto", "float32"), r.name
        autos += [r.name] if fields["dtype"] == "auto" else []
        assert r.config().dtype == "float32", r.name
        assert configs.build(r.config, {"dtype": "bfloat16"}).dtype == "bfloat16", r.name
    assert {"ff-supervised-mnist", "glom-mnist", "rbm-mnist", "ff-cifar10"} <= set(autos)
    for rule in (ff.FFRule(), boltzmann.RBMTraining(), boltzmann.UpDownTraining(),
                 glom.GlomRule()):
        assert rule.dtype == "float32", type(rule).__name__
    capabilities(monkeypatch, amx_bf16=True)
    assert ff.FFRule().dtype == "bfloat16"
    assert all(r.config().dtype == "bfloat16" for r in all_recipes()
               if {f.name: f.default for f in dataclasses.fields(r.config)}.get("dtype") == "auto")


@needs_mnist
def test_resume_keeps_the_recorded_dtype(monkeypatch, tmp_path, capsys):
    """A run started where auto meant fp32 resumes in fp32 on a machine where auto means bf16
    (without it the resolved configs differ and the resume is refused)."""
    out = tmp_path / "run"
    args = ["run", "bp-mnist-mlp", "--set", "epochs=1", "--set", "widths=32",
            "--set", "train_limit=1000", "--set", "batch_size=100", "--out", str(out)]
    capabilities(monkeypatch, avx2=True)
    assert cli.main(args) == 0
    assert "dtype: float32, since this machine has no native bf16" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["config"]["dtype"] == "float32"
    capabilities(monkeypatch, amx_bf16=True)
    assert cli.main([*args, "--resume", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["dtype"] == "float32"
    with pytest.raises(configs.ConfigError, match="different recipe or config"):
        cli._cmd_run(cli.parser().parse_args([*args, "--resume", "--set", "dtype=bfloat16"]))
