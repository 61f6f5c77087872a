"""Data-parallel RBM training (CD-k, PCD with a label softmax, resume) and up-down fine-tuning
in two processes over gloo, against one process on the combined batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mortal import distributed
from mortal.rules import boltzmann as bz
from mortal.runs import Run, model_metrics, read_metrics

from . import twoproc

N, D, H, LABELS = 200, 30, 20, 4


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(N, D, generator=g) ** 2  # grey levels: binary inputs drawn per batch
    return x, torch.eye(LABELS)[torch.randint(0, LABELS, (N,), generator=g)]


def _cd(out: Path) -> bz.RBM:
    """CD-2 growing to CD-3, inputs sampled per batch, 3 epochs."""
    rbm = bz.RBM.init(D, H, 0)
    bz.train_rbm(rbm, _data()[0], bz.RBMTraining(epochs=3, batch_size=20, k=2, k_end=3,
                                                 sample_inputs=True, dtype="float32", seed=1),
                 Run(out, "t", {}, quiet=True))
    return rbm


def _pcd(out: Path, epochs: int = 3, resume: bool = False) -> bz.RBM:
    """PCD-2 with labels as a softmax group (the multinomial draws of the global batch)."""
    x, y = _data()
    rbm = bz.RBM.init(D + LABELS, H, 0, n_softmax=LABELS)
    bz.train_rbm(rbm, x, bz.RBMTraining(epochs=epochs, batch_size=20, k=2, persistent=True,
                                        dtype="float32", seed=2),
                 Run(out, "t", {}, quiet=True, resume=resume), labels=y)
    return rbm


def _updown(out: Path) -> bz.DBN:
    """Two epochs of up-down on a 30-20-(16 + labels) DBN, test error logged every epoch."""
    x, y = _data()
    xb = (x > 0.3).float()
    dbn = bz.DBN.from_stack([bz.RBM.init(D, H, 3), bz.RBM.init(H + LABELS, 16, 4,
                                                                 n_softmax=LABELS)])

    def evaluate(d: bz.DBN) -> dict[str, float]:
        return {"train_error_pct": 100.0 * float((bz.dbn_predict(d, xb) != y.argmax(1))
                                                 .float().mean())}

    bz.train_updown(dbn, xb, y, bz.UpDownTraining(epochs=2, batch_size=20, lr=0.05,
                                                  dtype="float32", seed=3),
                    Run(out, "t", {}, quiet=True), evaluate)
    return dbn


def _weights(model: bz.RBM | bz.DBN) -> list[torch.Tensor]:
    if isinstance(model, bz.RBM):
        return list(model.state().values())
    return [t for pair in model.rec + model.gen for t in pair] + list(model.top.state().values())


def _worker(out: Path) -> None:
    """One of two data-parallel processes: CD, PCD stopped after 2 epochs and resumed, up-down."""
    torch.set_num_threads(1)
    distributed.init()
    r = distributed.rank()
    cd = _cd(out / "cd")
    _pcd(out / "pcd", epochs=2)
    pcd = _pcd(out / "pcd", epochs=3, resume=True)  # the chains come back from rank 0's file
    ud = _updown(out / "ud")
    torch.save({k: _weights(m) for k, m in (("cd", cd), ("pcd", pcd), ("ud", ud))},
               out / f"weights{r}.pt")
    twoproc.leave(out)  # leave the group with the other rank, exit without teardown


def _rows(path: Path) -> list[dict]:
    return model_metrics(read_metrics(path))


def test_data_parallel_rbm_and_updown_match_one_process(tmp_path):
    procs = twoproc.start("tests.test_distributed_boltzmann", tmp_path)
    ref = twoproc.one_thread(lambda: {  # meanwhile, the single-process references
        "cd": _cd(tmp_path / "ref_cd"), "pcd": _pcd(tmp_path / "ref_pcd"),
        "ud": _updown(tmp_path / "ref_ud")})
    twoproc.join(procs, tmp_path)
    for name in ref:
        want, got = _rows(tmp_path / f"ref_{name}"), _rows(tmp_path / name)
        assert len(want) == (2 if name == "ud" else 3) and len(got) == len(want), name
        for g_row, w_row in zip(got, want, strict=True):
            assert sorted(g_row) == sorted(w_row)
            for k, v in w_row.items():
                assert g_row[k] == pytest.approx(v, rel=1e-4, abs=1e-5), (name, k)
    w0, w1 = (torch.load(tmp_path / f"weights{r}.pt") for r in range(2))
    for name, model in ref.items():
        for a, b, want in zip(w0[name], w1[name], _weights(model), strict=True):
            assert torch.equal(a, b), name  # the replicas never drift apart
            assert torch.allclose(a, want, rtol=1e-4, atol=1e-5), name
    assert not (tmp_path / "cd" / "metrics.jsonl.tmp").exists()


if __name__ == "__main__":  # a worker of test_data_parallel_rbm_and_updown_match_one_process
    _worker(Path(sys.argv[1]))
