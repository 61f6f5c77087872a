"""Checkpoints round-trip model, optimizer and RNG state, and are written atomically."""

from __future__ import annotations

import json

import pytest
import torch

from mortal.runs import NonFiniteError, Run, check_finite
from mortal.runs import checkpoint as ck


def _model_and_opt():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    m(torch.randn(5, 4)).sum().backward()
    opt.step()
    return m, opt


def test_roundtrip(tmp_path):
    m, opt = _model_and_opt()
    state = {"model": m.state_dict(), "opt": opt.state_dict(), "n": 3, "xs": [1.5, None, "a"]}
    ck.save(tmp_path / "c.safetensors", state)
    back = ck.load(tmp_path / "c.safetensors")
    assert back["n"] == 3 and back["xs"] == [1.5, None, "a"]
    m2, opt2 = _model_and_opt()
    m2.load_state_dict(back["model"])
    opt2.load_state_dict(back["opt"])
    for a, b in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"])
    assert opt2.state_dict()["param_groups"][0]["lr"] == 0.01


def test_atomic_write_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    ck.save(path, {"w": torch.ones(3)})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        ck.save(path, {"w": torch.zeros(3)})
    assert torch.equal(ck.load(path)["w"], torch.ones(3))


def test_run_resume_restores_rng_clock_and_metrics(tmp_path):
    run = Run(tmp_path / "r", "demo", {"a": 1}, quiet=True)
    run.log(epoch=1, loss=1.0)
    run.train_seconds = 12.5
    torch.manual_seed(5)
    run.save(1, {"w": torch.arange(3.0)})
    expected = torch.rand(3)
    run.log(epoch=2, loss=0.5)  # logged after the checkpoint: lost with the "crash"

    again = Run(tmp_path / "r", "demo", {"a": 1}, resume=True, quiet=True)
    epoch, state = again.resume_state()
    assert epoch == 1 and torch.equal(state["w"], torch.arange(3.0))
    assert again.train_seconds == 12.5
    assert [r["epoch"] for r in again.metrics()] == [1]
    assert torch.equal(torch.rand(3), expected)


def test_resume_with_other_config_refused(tmp_path):
    Run(tmp_path / "r", "demo", {"a": 1}, quiet=True)
    from mortal.config import ConfigError

    with pytest.raises(ConfigError, match="different"):
        Run(tmp_path / "r", "demo", {"a": 2}, resume=True, quiet=True)


def test_resume_accepts_keys_added_since_at_their_defaults(tmp_path):
    """A run started before a recipe gained a key resumes when the key is at its default (the
    old code's behaviour), in its stages too; not when the key was set, or a key vanished."""
    from mortal.config import ConfigError

    Run(tmp_path / "r", "demo", {"a": 1}, quiet=True).stage("s")
    defaults = {"a": 5, "new": 0.0}
    run = Run(tmp_path / "r", "demo", {"a": 1, "new": 0.0}, resume=True, quiet=True,
              defaults=defaults)
    run.stage("s")  # the stage's own config.json is checked the same way
    for config, d in (({"a": 1, "new": 0.2}, defaults), ({"a": 1, "new": 0.0}, None),
                      ({"a": 1, "new": 0.0}, {"a": 1}), ({"new": 0.0}, defaults)):
        Run(tmp_path / "q", "demo", {"a": 1}, quiet=True)
        with pytest.raises(ConfigError, match="different"):
            Run(tmp_path / "q", "demo", config, resume=True, quiet=True, defaults=d)


def test_stage_from_another_run_differing_only_in_ignored_keys_is_taken(tmp_path):
    """A stage finished in a run that chose other stages (ff-cifar10 `--set depths=3`, say) and
    copied into stages/ is skipped on resume; a stage differing in any other key is refused."""
    import shutil

    from mortal.config import ConfigError

    part = Run(tmp_path / "part", "demo", {"depths": [3], "lr": 1}, quiet=True)
    part.stage("s3", ignore=("depths",)).finish_stage({"err": 4.0})
    whole = Run(tmp_path / "whole", "demo", {"depths": [2, 3], "lr": 1}, quiet=True)
    shutil.copytree(tmp_path / "part" / "stages", tmp_path / "whole" / "stages")
    whole = Run(tmp_path / "whole", "demo", {"depths": [2, 3], "lr": 1}, resume=True,
                quiet=True)
    assert whole.stage("s3", ignore=("depths",)).done()["err"] == 4.0
    with pytest.raises(ConfigError, match="different"):
        whole.stage("s3")  # without ignore, depths counts
    other = Run(tmp_path / "other", "demo", {"depths": [2, 3], "lr": 2}, quiet=True)
    shutil.copytree(tmp_path / "part" / "stages", tmp_path / "other" / "stages")
    other = Run(tmp_path / "other", "demo", {"depths": [2, 3], "lr": 2}, resume=True,
                quiet=True)
    with pytest.raises(ConfigError, match="different"):
        other.stage("s3", ignore=("depths",))


def test_a_key_added_since_reads_as_what_the_old_code_did(tmp_path):
    """ff-recurrent-mnist gained input_dropout at 0 and later made 0.2 the default: a run made
    before the key existed reads as 0 in the results table and resumes only at 0."""
    from mortal import config as configs
    from mortal.config import ConfigError
    from mortal.recipes import get
    from mortal.runs.report import setting_changes

    recipe = get("ff-recurrent-mnist")
    now = configs.to_dict(recipe.config())
    old = {k: v for k, v in now.items() if k != "input_dropout"}
    assert now["input_dropout"] == 0.2 and recipe.past_defaults()["input_dropout"] == 0.0
    assert setting_changes("ff-recurrent-mnist", old) == "input_dropout=0.0"
    assert setting_changes("ff-recurrent-mnist", now) == "default"
    assert setting_changes("ff-recurrent-mnist", {**now, "seed": 1, "eval_every": 3}) == "seed=1"
    local = configs.to_dict(get("ff-local-mnist").config())  # nested tuples, read back as lists
    assert setting_changes("ff-local-mnist", json.loads(json.dumps(local))) == "default"
    run = Run(tmp_path / "r", "ff-recurrent-mnist", old, quiet=True)
    with pytest.raises(ConfigError, match="different"):
        Run(run.dir, "ff-recurrent-mnist", now, resume=True, quiet=True,
            defaults=recipe.past_defaults())
    Run(run.dir, "ff-recurrent-mnist", {**now, "input_dropout": 0.0}, resume=True, quiet=True,
        defaults=recipe.past_defaults())


def test_check_finite_names_step_and_layer():
    check_finite({"layer 1": torch.tensor(1.0)}, 3)
    with pytest.raises(NonFiniteError, match=r"step 7.*layer 2=nan"):
        check_finite({"layer 1": torch.tensor(1.0), "layer 2": torch.tensor(float("nan"))}, 7)
