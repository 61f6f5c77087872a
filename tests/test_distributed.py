"""torch.distributed: shards, data parallel vs one process, the FF pipeline's exactness, a killed
worker, resume after the kill, configs that differ across ranks. Two processes over gloo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mortal import distributed
from mortal.arch.dense import MLP, dense_stack
from mortal.config import ConfigError
from mortal.rules import backprop, ff
from mortal.runs import Run, model_metrics, read_metrics

from . import twoproc
from .conftest import REPO, needs_mnist

# --- pure functions ------------------------------------------------------------------------


def test_blocks_are_consecutive_and_balanced():
    assert distributed.blocks(4, 2) == [(0, 2), (2, 4)]
    assert distributed.blocks(5, 2) == [(0, 3), (3, 5)]
    assert distributed.blocks(3, 3) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ConfigError, match="between 1 and 2"):
        distributed.blocks(2, 3)


def test_shards_are_disjoint_and_make_the_single_process_epoch():
    n, batch = 23, 6  # 3 full batches; the last 5 examples are dropped, as in one process
    one = distributed.epoch_shard(n, batch, seed=1, epoch=4, r=0, w=1)
    parts = [distributed.epoch_shard(n, batch, seed=1, epoch=4, r=r, w=3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == sorted(one.tolist()) and len(one) == 18
    # rank r reads rows 2r, 2r+1 of each global batch of 6
    assert parts[1][:2].tolist() == one[2:4].tolist()
    assert parts[2][2:4].tolist() == one[10:12].tolist()
    again = distributed.epoch_shard(n, batch, seed=1, epoch=4, r=1, w=3)
    assert torch.equal(again, parts[1])  # deterministic
    assert not torch.equal(distributed.epoch_shard(n, batch, 1, 5, 1, 3), parts[1])  # per epoch
    assert distributed.shard(torch.arange(6), 2, 3).tolist() == [4, 5]
    with pytest.raises(ConfigError, match="multiple of 4"):
        distributed.shard(torch.arange(6), 0, 4)


def test_config_hash_and_single_process_defaults():
    assert distributed.config_hash("a", {"lr": 1}) != distributed.config_hash("a", {"lr": 2})
    assert distributed.config_hash("a", {"x": 1, "y": 2}) == distributed.config_hash(
        "a", {"y": 2, "x": 1})
    assert (distributed.rank(), distributed.world(), distributed.is_main()) == (0, 1, True)
    assert distributed.from_main(lambda: 7) == 7
    if not distributed.launched():
        assert distributed.init() is False
        with pytest.raises(ConfigError, match="needs 2 processes"):
            distributed.init(pipeline=2)


# --- two processes: data parallel and pipeline against one process ---------------------------

D_IN, WIDTHS = 40, (24, 24, 24)  # three layers: the pipeline's stages own 2 and 1


def _data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    x_train, x_test = torch.rand(300, D_IN, generator=g), torch.rand(100, D_IN, generator=g)
    y_train, y_test = torch.randint(0, 10, (300,), generator=g), torch.randint(0, 10, (100,),
                                                                               generator=g)
    return x_train, y_train, x_test, y_test


def _ff_net() -> ff.FFNet:
    torch.manual_seed(0)
    rule = ff.FFRule(loss="pairwise", temperature=3.0, peer_weight=0.03, optimizer="adam",
                     lr=1e-2, weight_decay=3e-4, dtype="float32")
    return ff.FFNet(dense_stack(D_IN, WIDTHS, "relu_st", "fan_out"), rule)


LOOP = ff.FFTraining(epochs=3, batch_size=50, hard_negatives_every=1, hard_negatives_mix=1.0,
                     eval_every=2, softmax_epochs=2)


def _train_ff(out: Path) -> ff.FFNet:
    net = _ff_net()
    ff.train(net, *_data(), LOOP, Run(out, "t", {}, quiet=True), progress=False)
    return net


def _train_bp(out: Path) -> None:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = _data()
    backprop.train(MLP(D_IN, (32, 32), 10), backprop.Split(x_train, y_train, x_test, y_test),
                   Run(out, "t", {}, quiet=True), epochs=2, batch_size=50, lr=3e-3,
                   dtype="float32", progress=False)


def _worker(out: Path) -> None:
    """One of two processes: config check, data-parallel FF, pipelined FF, data-parallel BP."""
    torch.set_num_threads(1)
    distributed.init()
    r = distributed.rank()
    try:  # the ranks disagree: both must refuse
        distributed.check_same_config("t", {"lr": r})
        refused = ""
    except ConfigError as e:
        refused = str(e)
    distributed.check_same_config("t", {"lr": 1})  # they agree: no error
    (out / f"refused{r}.txt").write_text(refused)
    net = _train_ff(out / "dp")
    torch.save(net.state_dict(), out / f"dp_weights{r}.pt")
    distributed.init(pipeline=2)
    _train_ff(out / "pipe")
    distributed.init(pipeline=0)
    _train_bp(out / "bp")
    twoproc.leave(out)


def test_data_parallel_and_pipeline_match_one_process(tmp_path):
    procs = twoproc.start("tests.test_distributed", tmp_path)
    ref_net = twoproc.one_thread(_train_ff, tmp_path / "ref")  # meanwhile, the reference
    twoproc.one_thread(_train_bp, tmp_path / "ref_bp")
    twoproc.join(procs, tmp_path)
    ref = model_metrics(read_metrics(tmp_path / "ref"))
    assert len(ref) == 3 and "test_error_pct" in ref[1] and "test_error_softmax_pct" in ref[2]
    # The pipeline: every logged number equal, bit for bit, to the single process's.
    assert model_metrics(read_metrics(tmp_path / "pipe")) == ref
    # Data parallel: the same batches, gradients averaged: equal up to rounding order.
    dp = model_metrics(read_metrics(tmp_path / "dp"))
    assert [sorted(r) for r in dp] == [sorted(r) for r in ref]
    for got, want in zip(dp, ref, strict=True):
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    w0, w1 = (torch.load(tmp_path / f"dp_weights{r}.pt") for r in range(2))
    for k, v in ref_net.state_dict().items():
        assert torch.equal(w0[k], w1[k]), k  # the replicas never drift apart
        assert torch.allclose(w0[k], v, rtol=1e-4, atol=1e-5), k
    bp, ref_bp = read_metrics(tmp_path / "bp"), read_metrics(tmp_path / "ref_bp")
    for got, want in zip(bp, ref_bp, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)
        assert got["test_error_pct"] == want["test_error_pct"]
    for r in range(2):
        assert "different configs" in (tmp_path / f"refused{r}.txt").read_text()
    # Only rank 0 wrote the run directories.
    assert not (tmp_path / "dp" / "metrics.jsonl.tmp").exists()


# --- the command line: a killed worker, resume after the kill --------------------------------

SMALL_FF = ["--set", "widths=32,32,32", "--set", "train_limit=500", "--set", "batch_size=50",
            "--set", "dtype=float32", "--set", "softmax_epochs=2", "--set", "eval_every=100",
            "--threads", "1", "--quiet"]


def _descendant_with_rank(pid: int, rank: int) -> int | None:
    """The pid of the torchrun worker of `rank` among the descendants of `pid`."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    for child, parent in parents.items():
        p, seen = parent, 0
        while p not in (pid, 0, 1) and seen < 10:
            p, seen = parents.get(p, 0), seen + 1
        if p != pid:
            continue
        try:
            env = (Path("/proc") / str(child) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return child
    return None


def _run_cli(args: list[str]) -> int:
    from mortal.cli import main

    threads = torch.get_num_threads()
    try:
        return main(args)
    finally:
        torch.set_num_threads(threads)


@needs_mnist
def test_killed_worker_stops_the_run_and_resume_reproduces_it(tmp_path, capsys):
    out, epochs = tmp_path / "killed", ["--set", "epochs=6"]
    args = ["run", "ff-supervised-mnist", *SMALL_FF, *epochs, "--pipeline", "2", "--out", str(out)]
    cmd = [sys.executable, "-m", "mortal", *args]  # `mortal run --pipeline 2` calls torchrun
    env = {**os.environ, distributed.TIMEOUT_ENV: "60"}
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while len(read_metrics(out)) < 2 and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim = _descendant_with_rank(launcher.pid, 1)
    assert victim is not None and launcher.poll() is None, "the run ended before the kill"
    os.kill(victim, signal.SIGKILL)
    t0 = time.time()
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode != 0 and time.time() - t0 < 60
    assert "the distributed run failed" in err and "--resume" in err
    assert (out / "checkpoint.safetensors").exists() and not (out / "results.json").exists()
    # Resume: in two pipeline stages again (torchrun itself this time), and a copy in one
    # process (a different count); both end exactly where a run that was never killed ends.
    shutil.copytree(out, tmp_path / "copy")
    r = subprocess.run(distributed.torchrun_command(2, [*args, "--resume"]), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for args in (["--out", str(tmp_path / "copy"), "--resume"], ["--out", str(tmp_path / "whole")]):
        assert _run_cli(["run", "ff-supervised-mnist", *SMALL_FF, *epochs, *args]) == 0
    capsys.readouterr()
    whole = model_metrics(read_metrics(tmp_path / "whole"))
    assert len(whole) == 6 and "test_error_pct" in whole[-1]
    for d in (out, tmp_path / "copy"):
        assert model_metrics(read_metrics(d)) == whole
        res = json.loads((d / "results.json").read_text())
        assert res["test_error_pct"] == json.loads(
            (tmp_path / "whole" / "results.json").read_text())["test_error_pct"]


if __name__ == "__main__":  # a worker of test_data_parallel_and_pipeline_match_one_process
    _worker(Path(sys.argv[1]))
