"""GLOM data parallel (issue #9): two processes over gloo train like one process on the combined
batch, in mode=local (InfoNCE negatives from the global batch, far negatives on, two shifted
views of every image; and with the losses on inked columns only, whose count is the global
batch's, plus the FF goodness term on hybrid negatives drawn for the global batch) and
mode=paper (the masked-pixel mean over the global batch's masked columns), and
mode=supervised with a class per column (the mean over the global batch's labelled columns,
which the two halves hold unequally). The
two-process local run is stopped after its first checkpoint and resumed, and still ends where
one uninterrupted process does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mortal import distributed
from mortal.arch.glom import Glom, GlomSpec
from mortal.rules import glom as rule_mod
from mortal.runs import Run, model_metrics, read_metrics

from . import twoproc

SPEC = GlomSpec(image=(1, 12, 12), n_levels=3, dim=8, hidden=16, pos_freqs=2,
                weights=(1.0, 0.5, 0.5, 1.0), beta=3.0, radius=(1.5, 2.5, 0.0))
BATCH, STEPS, LOG_EVERY = 8, 4, 2


def _batch(step: int, per_column: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of a step: the same on every process (seeded by the step). With
    `per_column`, a class per column, -1 (unlabelled) for most of the second half's columns."""
    g = torch.Generator().manual_seed(1000 + step)
    x = (torch.rand(BATCH, *SPEC.image, generator=g) > 0.95).float()  # some empty columns
    if not per_column:
        return x, torch.randint(0, 3, (BATCH,), generator=g)
    n = SPEC.grid[0] * SPEC.grid[1]
    y = torch.randint(0, 3, (BATCH, n), generator=g)
    y[BATCH // 2:, 1:] = -1  # the second process holds far fewer labelled columns
    return x, y


class _Stop(Exception):
    """Raised by the batch of the step a stopped run does not reach."""


def _train(out: Path, mode: str, stop_at: int | None = None, resume: bool = False) -> Glom:
    """A tiny GLOM trained for STEPS steps in fp32 (stopped before step `stop_at` if given);
    mode "local_ink": local, losses on inked columns only, far negatives only, and the
    goodness term on hybrids (drawn from the checkpointed generator); "local": two
    shifted views of each image (their draws come from the checkpointed generator);
    "supervised_columns": supervised, a class per column."""
    torch.manual_seed(0)
    model = Glom(SPEC)
    ink = mode == "local_ink"
    per_column = mode == "supervised_columns"
    rule_mode = "local" if ink else "supervised" if per_column else mode
    rule = rule_mod.GlomRule(mode=rule_mode, iterations=2, lr=1e-2, tau=0.2,
                             far_negatives=True, ink_only=ink, image_negatives=not ink,
                             views=2 if mode == "local" else 1, n_classes=3, dtype="float32",
                             goodness_weight=0.5 if ink else 0.0)
    head = rule_mod.make_head(model, rule)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if step == stop_at:
            raise _Stop
        if resume and step < LOG_EVERY:  # a resumed run starts after its checkpoint
            raise AssertionError(f"the resumed run redid step {step}")
        return _batch(step, per_column)

    def on_log(step: int) -> dict[str, float]:  # an evaluation: rank 0 computes it, once
        e = rule_mod.states(model, _batch(99)[0], 2, "float32")
        return {"eval_mean": float(e.mean()), "rank_that_evaluated": float(distributed.rank())}

    run = Run(out, "t", {"mode": mode}, quiet=True, resume=resume, record_env=False)
    try:
        rule_mod.train(model, head, batch, STEPS, rule, run, log_every=LOG_EVERY, seed=0,
                       progress=False, on_log=on_log)
    except _Stop:
        pass
    return model


def _runs(out: Path, resume: bool) -> dict[str, Glom]:
    """Both modes and the recipe's local settings; with `resume` the plain local run is
    stopped after its first checkpoint, then resumed (the workers do; the reference does not)."""
    nets = {mode: _train(out / mode, mode) for mode in ("local_ink", "paper",
                                                        "supervised_columns")}
    if resume:
        _train(out / "local", "local", stop_at=LOG_EVERY)
    nets["local"] = _train(out / "local", "local", resume=resume)
    return nets


def _worker(out: Path) -> None:
    """One of two data-parallel processes."""
    torch.set_num_threads(1)
    distributed.init()
    r = distributed.rank()
    for name, net in _runs(out / "dp", resume=True).items():
        torch.save(net.state_dict(), out / f"{name}_weights{r}.pt")
    twoproc.leave(out)  # leave the group together, mark done, skip the interpreter teardown


def test_glom_data_parallel_matches_one_process(tmp_path):
    procs = twoproc.start("tests.test_distributed_glom", tmp_path)
    # meanwhile, one process on the combined batches
    ref = twoproc.one_thread(_runs, tmp_path / "ref", False)
    twoproc.join(procs, tmp_path)
    for name in ("local", "local_ink", "paper", "supervised_columns"):
        want = model_metrics(read_metrics(tmp_path / "ref" / name))
        got = model_metrics(read_metrics(tmp_path / "dp" / name))
        assert len(want) == STEPS // LOG_EVERY
        assert ("loss_bu0" if name.startswith("local") else "loss_main") in want[0]
        assert [sorted(r) for r in got] == [sorted(r) for r in want], name
        for g_row, w_row in zip(got, want, strict=True):
            assert g_row["rank_that_evaluated"] == 0.0
            for k, v in w_row.items():
                assert g_row[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (name, k)
        w0, w1 = (torch.load(tmp_path / f"{name}_weights{r}.pt") for r in range(2))
        for k, v in ref[name].state_dict().items():
            assert torch.equal(w0[k], w1[k]), (name, k)  # the replicas never drift apart
            assert torch.allclose(w0[k], v, rtol=1e-4, atol=1e-6), (name, k)
    assert not (tmp_path / "dp" / "local" / "metrics.jsonl.tmp").exists()


if __name__ == "__main__":  # a worker of test_glom_data_parallel_matches_one_process
    _worker(Path(sys.argv[1]))
