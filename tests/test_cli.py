"""The command line as a user meets it: exit codes, messages without tracebacks, run records."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mortal.runs import model_metrics, read_metrics

from .conftest import SHARED_DATA, needs_mnist

SMALL_BP = ["--set", "widths=64,64", "--set", "train_limit=3000", "--set", "batch_size=100"]


def mortal(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mortal", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def test_recipes_lists_paper_numbers():
    r = mortal("recipes")
    assert r.returncode == 0, r.stderr
    assert "bp-mnist-mlp" in r.stdout and "1.4 %" in r.stdout
    assert "ff-supervised-mnist" in r.stdout and "1.36 %" in r.stdout
    for name, paper in [("ff-unsupervised-mnist", "1.37 %"), ("ff-local-mnist", "1.16 %"),
                        ("distill-mnist", "0.74 %"), ("distill-omitted-mnist", "1.09 %"),
                        ("noisy-labels-mnist", "5.0 %")]:
        assert name in r.stdout and paper in r.stdout, name


def test_unknown_key_rejected_before_training(tmp_path):
    r = mortal("run", "bp-mnist-mlp", "--set", "epoch=1", "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    assert "unknown config key epoch" in r.stderr and "epochs (int) = 20" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()


def test_bad_value_and_unknown_recipe(tmp_path):
    r = mortal("run", "bp-mnist-mlp", "--set", "lr=-1", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "lr must be > 0" in r.stderr and "Traceback" not in r.stderr
    r = mortal("run", "no-such-recipe")
    assert r.returncode == 2 and "known recipes" in r.stderr


def test_fresh_run_refuses_a_directory_that_holds_a_run(tmp_path):
    """Forgetting --resume must not delete hours of training: the run stops before touching
    the directory and says how to go on."""
    out = tmp_path / "r"
    (out / "stages" / "cell-a").mkdir(parents=True)
    (out / "checkpoint.safetensors").write_bytes(b"weights")
    r = mortal("run", "bp-mnist-mlp", "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "already holds a run" in r.stderr and "--resume" in r.stderr
    assert "--overwrite" in r.stderr and "1 stage(s)" in r.stderr
    assert (out / "checkpoint.safetensors").read_bytes() == b"weights"
    assert (out / "stages" / "cell-a").is_dir()


def test_resume_and_overwrite_together_are_refused(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"weights")
    r = mortal("run", "bp-mnist-mlp", "--out", str(out), "--resume", "--overwrite")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    assert (out / "checkpoint.safetensors").read_bytes() == b"weights"


@needs_mnist
def test_overwrite_starts_again_in_a_used_directory(tmp_path):
    out = tmp_path / "r"
    (out / "stages" / "stale").mkdir(parents=True)
    r = mortal("run", "bp-mnist-mlp", "--set", "epochs=1", *SMALL_BP, "--out", str(out),
               "--quiet", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "results.json").exists() and not (out / "stages" / "stale").exists()


@needs_mnist
def test_run_writes_records_and_report(tmp_path):
    out = tmp_path / "run"
    r = mortal("run", "bp-mnist-mlp", "--set", "epochs=2", *SMALL_BP, "--out", str(out),
               "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    for key in ("recipe", "dataset", "test_error_pct", "paper_test_error_pct", "epochs",
                "train_seconds", "examples_per_second"):
        assert key in res
    assert res["epochs"] == 2 and res["paper_test_error_pct"] is None  # subset: not comparable
    assert res["test_error_pct"] < 50  # a records test; learning is tested below
    env = json.loads((out / "env.json").read_text())
    assert {"torch", "cpu", "torch_threads", "git_revision", "dtype"} <= env.keys()
    assert json.loads((out / "config.json").read_text())["config"]["widths"] == [64, 64]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    report = (out / "report.md").read_text()
    pngs = [p for p in out.glob("*.png")]
    assert pngs and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert pngs[0].name in report and "paper" in report
    assert "test error" in r.stdout
    # `mortal report` re-renders from the files alone.
    (out / "report.md").unlink()
    r = mortal("report", str(out))
    assert r.returncode == 0 and (out / "report.md").exists()


@needs_mnist
def test_killed_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL a run after its first checkpoint; --resume finishes it with the same metrics
    as a run that was never interrupted."""
    args = ["run", "bp-mnist-mlp", "--set", "epochs=4", "--set", "widths=256,256",
            "--set", "train_limit=12000", "--quiet", "--threads", "1"]
    whole = tmp_path / "whole"
    assert mortal(*args, "--out", str(whole)).returncode == 0

    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "mortal", *args, "--out", str(cut)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "results.json").exists(), "the run finished before it could be killed"
    r = mortal(*args, "--out", str(cut), "--resume")
    assert r.returncode == 0, r.stderr

    assert model_metrics(read_metrics(whole)) == model_metrics(read_metrics(cut))
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (whole, cut))
    for key in ("test_error_pct", "train_error_pct"):
        assert ra[key] == rb[key]


@needs_mnist
def test_backprop_baseline_learns_mnist_subset(tmp_path):
    """2x256 MLP, 12,000 MNIST images, 3 epochs (~10 s): below 10 % test error (measured 7.3 %)."""
    out = tmp_path / "bp"
    r = mortal("run", "bp-mnist-mlp", "--set", "epochs=3", "--set", "widths=256,256",
               "--set", "train_limit=12000", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "results.json").read_text())["test_error_pct"] < 10.0


@needs_mnist
def test_ff_recipe_reports_both_modes(tmp_path):
    out = tmp_path / "ff"
    # 40 steps of 250 (the default batch of 1000 gives a 10,000-image epoch only 10 steps)
    r = mortal("run", "ff-supervised-mnist", "--set", "epochs=1", "--set", "widths=256,256",
               "--set", "train_limit=10000", "--set", "batch_size=250",
               "--set", "softmax_epochs=2", "--out", str(out),
               "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert {"test_error_goodness_pct", "test_error_softmax_pct"} <= res.keys()
    assert res["test_error_pct"] == min(res["test_error_goodness_pct"],
                                        res["test_error_softmax_pct"])
    assert res["test_error_pct"] < 20
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_layer1", "loss_layer2", "ff_acc_layer2", "test_error_pct"} <= rows[-1].keys()


@needs_mnist
def test_glom_mnist_recipe_probes_and_draws(tmp_path):
    out = tmp_path / "glom"
    r = mortal("run", "glom-mnist", "--set", "train_limit=400", "--set", "test_limit=300",
               "--set", "batch_size=50", "--set", "probe_epochs=200", "--set", "tsne_points=60",
               "--set", "n_pictures=1", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "local" and res["target_accuracy_pct"] == 98.7
    assert res["probe_accuracy_pct"] > 50  # 8 steps and a 400-image probe; chance is 10
    assert {"islands_0.png", "islands_0.gif", "tsne_top_level.png"} <= set(res["figures"])
    assert all((out / f).stat().st_size > 0 for f in res["figures"])
    assert "linear probe on the top level" in (out / "table.md").read_text()


def test_glom_parts_recipe_writes_aris_classification_baseline_and_pictures(tmp_path):
    """`mortal run glom-parts`, shrunk: per-level ARIs, classification against ambiguity, the
    untrained nets and the position-alone baseline, and the island pictures."""
    out = tmp_path / "parts"
    r = mortal("run", "glom-parts", "--set", "epochs=1", "--set", "steps_per_epoch=2",
               "--set", "batch_size=8", "--set", "iterations=2", "--set", "ambiguities=0,0.8",
               "--set", "n_val=4", "--set", "n_test=8", "--set", "n_probe_train=16",
               "--set", "probe_epochs=5", "--set", "eval_iterations=2", "--set", "n_pictures=1",
               "--out", str(out),
               "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    for a in ("0", "0.8"):
        ev = res["per_ambiguity"][a]
        assert len(ev["part_ari_per_level"]) == len(ev["object_ari_per_level"]) == 4
        assert 0 <= ev["classification_accuracy_pct"] <= 100
        assert {"part_ari", "object_ari"} <= res["position_baseline_per_ambiguity"][a].keys()
        assert a in res["untrained_per_ambiguity"]
    assert "position alone (no net)" in (out / "table.md").read_text()
    assert any(f.endswith(".gif") for f in res["figures"])
    assert all((out / f).stat().st_size > 0 for f in res["figures"])


def test_glom_parts_votes_recipe_writes_levels_and_resumes(tmp_path):
    """`mortal run glom-parts-votes`, shrunk: both levels' ARIs, classification, the baseline
    and the pictures per ambiguity; a resumed finished run retrains nothing and says the same."""
    out = tmp_path / "votes"
    args = ("run", "glom-parts-votes", "--set", "epochs=1", "--set", "steps_per_epoch=3",
            "--set", "batch_size=4", "--set", "ambiguities=0,0.8", "--set", "n_val=4",
            "--set", "n_test=6", "--set", "n_probe_train=16", "--set", "probe_epochs=5",
            "--set", "n_pictures=2", "--out", str(out), "--quiet")
    r = mortal(*args)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    for a in ("0", "0.8"):
        ev = res["per_ambiguity"][a]
        assert len(ev["part_ari_per_level"]) == len(ev["object_ari_per_level"]) == 2
        assert len(ev["classification_accuracy_pct_per_level"]) == 2
        assert a in res["untrained_per_ambiguity"] and a in res["position_baseline_per_ambiguity"]
        assert (out / "stages" / f"amb{a}-level1" / "level.safetensors").exists()
    figures = set(res["figures"])
    assert {"islands_amb0.png", "islands_amb0.8.png"} <= figures
    assert {f"rounds_amb0.8_{i}.{e}" for i in (0, 1) for e in ("png", "gif")} <= figures
    assert all((out / f).stat().st_size > 0 for f in figures)
    assert "position alone (no net)" in (out / "table.md").read_text()
    r2 = mortal(*args, "--resume")
    assert r2.returncode == 0, r2.stderr
    again = json.loads((out / "results.json").read_text())
    assert again["per_ambiguity"] == res["per_ambiguity"]
    assert again["train_seconds"] == res["train_seconds"]
    # a new level 1 above the same level 0: its stages copied into a new run, which keeps
    # them when only level 1's settings differ and refuses them when level 0's differ
    for name, density, pairs, ok in (("new1", "0.1,0.05", "all", True),
                                     ("new0", "0.2,0.02", "across", False)):
        d = tmp_path / name
        for a in ("0", "0.8"):
            shutil.copytree(out / "stages" / f"amb{a}-level0", d / "stages" / f"amb{a}-level0")
        args2 = [str(d) if x == str(out) else x for x in args]
        r3 = mortal(*args2, "--set", f"density={density}", "--set", f"density_pairs={pairs}",
                    "--resume")
        if ok:
            assert r3.returncode == 0, r3.stderr
            new = json.loads((d / "results.json").read_text())["per_ambiguity"]
            for a in ("0", "0.8"):
                assert new[a]["part_ari_per_level"][0] == res["per_ambiguity"][a][
                    "part_ari_per_level"][0]
                assert ((d / "stages" / f"amb{a}-level0" / "metrics.jsonl").read_text()
                        == (out / "stages" / f"amb{a}-level0" / "metrics.jsonl").read_text())
        else:
            assert r3.returncode != 0 and "level 0 was trained with other density" in r3.stderr


def _mnist_copy(tmp_path: Path) -> Path:
    d = tmp_path / "mnist"
    shutil.copytree(SHARED_DATA / "mnist", d)
    for p in d.iterdir():
        p.chmod(0o644)
    return d


@needs_mnist
def test_data_check_cli(tmp_path):
    r = mortal("data", "check", "mnist", "--root", str(SHARED_DATA / "mnist"))
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    d = _mnist_copy(tmp_path)
    raw = bytearray(gzip.decompress((d / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[5000] ^= 0xFF
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    r = mortal("data", "check", "mnist", "--root", str(d))
    assert r.returncode != 0 and "t10k-images" in r.stderr and "Traceback" not in r.stderr
    (d / "train-labels-idx1-ubyte.gz").unlink()
    r = mortal("data", "check", "mnist", "--root", str(d))
    assert r.returncode != 0 and "train-labels" in r.stderr and "Traceback" not in r.stderr
    r = mortal("data", "list")
    assert r.returncode == 0 and "mnist" in r.stdout and "cifar10" in r.stdout


@needs_mnist
def test_results_table_is_generated_from_run_directories(tmp_path):
    out = tmp_path / "runs" / "bp"
    r = mortal("run", "bp-mnist-mlp", *SMALL_BP, "--set", "epochs=1", "--out", str(out),
               "--quiet")
    assert r.returncode == 0, r.stderr
    table = tmp_path / "RESULTS.md"
    r = mortal("results", str(tmp_path / "runs"), "--out", str(table))
    assert r.returncode == 0, r.stderr
    text = table.read_text()
    ours = json.loads((out / "results.json").read_text())["test_error_pct"]
    assert "| bp-mnist-mlp |" in text and f"{ours:.4g}" in text
    assert str(out) in text
    # the setting column says how the run differs from the recipe's experiment
    assert "| widths=64x2, epochs=1, train_limit=3000 |" in text
