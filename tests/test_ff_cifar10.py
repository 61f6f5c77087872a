"""ff-cifar10: config checks, the paper's net shapes, the min-ssq sign, top-down locality, and a
smoke run of the whole table on a tiny CIFAR-10 subset."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mortal.recipes import ff_cifar10 as fc
from mortal.recipes import ff_recurrent_mnist as rec
from mortal.rules import ff

USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mortal"


def _cifar_dir() -> Path | None:
    """The folder of the real CIFAR-10 copy under MORTAL_DATA, or None."""
    root = Path(os.environ.get("MORTAL_DATA", ""))
    for name in ("cifar10-jpeg", "cifar10", "cifar-10-batches-py"):
        if root.is_dir() and (root / name).exists():
            return root / name
    return None


needs_cifar = pytest.mark.skipif(_cifar_dir() is None, reason="CIFAR-10 not found (MORTAL_DATA)")


def test_config_validation():
    assert fc.Config().validate() == []
    bad = fc.Config(kernel=4, goodnesses=("ssq",), score_to=11, depths=(), test_limit=-1,
                    block=(2,))
    problems = " ".join(bad.validate())
    for word in ("kernel", "goodnesses", "score_from", "depths", "test_limit", "block"):
        assert word in problems


@pytest.mark.parametrize("depth", [2, 3])
def test_paper_shapes(depth):
    cfg = fc.Config()
    net = fc.ff_net(cfg, depth)
    assert net.widths == [3072] * depth                      # 32x32 maps, 3 ReLUs per place
    first = net.layers[0].local
    assert first.out_shape == (32, 32, 3)                    # zero padding keeps 32x32
    # bottom-up 11x11x3 = 363 inputs, plus 363 top-down from the 3-channel map above
    assert first.weight.shape == (1024, 363 + 363, 3)
    top = net.layers[-1]
    assert top.local.weight.shape == (1024, 363, 3) and top.label.in_features == 10
    assert all(layer.label is None for layer in net.layers[:-1])
    bp = fc.bp_net(cfg, depth)
    assert bp[0].weight.shape == (1024, 363, 3) and bp[-1].in_features == 3072
    x = torch.randn(2, 3072)
    assert bp(x).shape == (2, 10)
    states = net.run(x, rec.one_hot(torch.tensor([1, 2])), 2)
    assert len(states) == 2 and [s.shape for s in states[-1]] == [(2, 3072)] * depth
    assert net.layers[-1].label.weight.abs().sum() > 0
    zero = fc.ff_net(fc.Config(label_init="zero"), depth)
    assert zero.layers[-1].label.weight.abs().sum() == 0  # the label starts with no effect


def test_min_ssq_makes_positive_data_low():
    fn, sign = ff.GOODNESS[fc.GOODNESS["min_ssq"]]
    low, high = torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 1.0]])
    assert fn(low).item() == pytest.approx(-0.5) and fn(high).item() == pytest.approx(-5.0)
    assert sign == -1.0
    # low activity on positive data is what the loss rewards: pairwise and threshold forms
    assert ff.pairwise_loss(fn(low), fn(high)) < ff.pairwise_loss(fn(high), fn(low))
    theta = sign * 1.0 * 2  # 1 per unit, 2 units
    assert ff.ff_loss(fn(low), fn(high), theta) < ff.ff_loss(fn(high), fn(low), theta)


def test_every_label_picks_lowest_ssq_for_min_ssq(monkeypatch):
    # sum of squares per label (N=1, 10 labels, 5 iterations): label 7 has the least activity
    ssq = torch.full((1, 10, 5), 4.0)
    ssq[0, 7] = 1.0
    ssq[0, 2] = 9.0
    monkeypatch.setattr(rec, "goodness_by_iteration", lambda *a, **k: ssq)
    cfg = fc.Config()
    net = torch.nn.Module()  # any module: the goodness is the mock above
    assert fc.every_label_scores(net, torch.zeros(1, 3), cfg, "min_ssq").argmax(1).item() == 7
    assert fc.every_label_scores(net, torch.zeros(1, 3), cfg, "max_ssq").argmax(1).item() == 2


def test_top_down_input_is_local():
    torch.manual_seed(0)
    net = fc.ff_net(replace(fc.Config(), image_size=8, kernel=3), 2)
    x = torch.randn(1, 8 * 8 * 3)
    y = rec.one_hot(torch.tensor([3]))
    states = net.initial(x)
    above = states[1].clone().view(1, 8, 8, 3)
    above[0, 0, 0], above[0, 0, 1] = states[1].view(1, 8, 8, 3)[0, 0, 1], above[0, 0, 0].clone()
    # swapping two places of the map above keeps its length, so normalisation changes nothing
    # else: only layer-1 units whose 3x3 window covers (0, 0) or (0, 1) may change
    a = net.step(states, x, y)[0].view(8, 8, 3)
    b = net.step([states[0], above.flatten(1)], x, y)[0].view(8, 8, 3)
    changed = (a - b).abs().sum(2) > 1e-4  # elsewhere only rounding (summation order)
    near = torch.zeros(8, 8, dtype=torch.bool)
    near[:2, :3] = True
    assert changed.any() and not (changed & ~near).any()


@needs_cifar
def test_smoke_run_writes_every_cell(tmp_path, monkeypatch):
    decoded = USER_CACHE / "decoded"
    if decoded.is_dir():  # reuse a decoded copy instead of decoding 60000 JPEGs (~20 s)
        dest = Path(os.environ["MORTAL_CACHE"]) / "decoded"
        dest.mkdir(parents=True, exist_ok=True)
        for f in decoded.glob("cifar10-*.npz"):
            os.symlink(f, dest / f.name)
    from mortal.runs import Run

    cfg = fc.Config(epochs=1, train_limit=300, test_limit=200, eval_train_limit=100,
                    image_size=8, kernel=3, iterations=3, score_from=2, score_to=3,
                    softmax_epochs=3, eval_batch_size=200)
    assert cfg.validate() == []
    run = Run(tmp_path / "run", "ff-cifar10", {}, quiet=True)
    results = run.finish(fc.train(cfg, run))
    table = (tmp_path / "run" / "table.md").read_text()
    assert len(results["cells"]) == 10 and set(results["cells"]) == set(fc.PAPER)
    for name, c in results["cells"].items():
        assert 0 <= c["train_error_pct"] <= 100 and 0 <= c["test_error_pct"] <= 100, name
    assert table.count("\n| ") == 10 + 1                       # header + every cell
    assert "CIFAR-10 (JPEG copy)" in table
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["best_cell"].startswith("ff-") and saved["paper_test_error_pct"] is None
    # even this tiny run learns something: the best FF cell beats chance (90 %)
    assert saved["test_error_pct"] < 85.0
    shutil.rmtree(tmp_path / "run")


def test_hard_negatives_table_is_wrong_labels_and_checkpointed(tmp_path):
    """hard_negatives_every=1: from the second epoch the negatives come from a table of the
    net's own every-label beliefs, never the true label, saved with the checkpoint."""
    from mortal.recipes.common import Split
    from mortal.runs import Run

    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 10
    x = torch.randn(60, 4 * 4 * 3, generator=g) + y[:, None] * 0.1
    data = Split(x, y, x[:20], y[:20])
    cfg = fc.Config(epochs=2, batch_size=20, image_size=4, kernel=3, iterations=3,
                    score_from=2, score_to=3, softmax_epochs=1, eval_batch_size=60,
                    eval_train_limit=20, hard_negatives_every=1, dtype="float32")
    assert cfg.validate() == []
    run = Run(tmp_path / "run", "ff-cifar10", {}, quiet=True)
    out = fc.train_ff(cfg, data, 2, "min_ssq", run.stage("ff"))
    epoch, state = Run(tmp_path / "run", "ff-cifar10", {}, quiet=True, resume=True
                       ).stage("ff").resume_state()
    assert epoch == 2 and state is not None
    table = state["y_neg_table"]
    assert table.shape == (60,) and not (table == y).any()
    assert 0 <= out["every_label"]["test_error_pct"] <= 100
    assert fc.Config(hard_negatives_every=-1).validate()


def test_fast_and_reference_passes_train_the_same_net(tmp_path):
    """The recipe's training with the hand-written passes (the default) and with autograd
    (impl=reference): in fp32, after two epochs of Adam, the same weights and the same
    errors, so the fast path is wired into the loop (zeroed grads, one step per batch)."""
    from mortal.recipes.common import Split
    from mortal.runs import Run

    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 10
    x = torch.randn(60, 4 * 4 * 3, generator=g) + y[:, None] * 0.1
    data = Split(x, y, x[:20], y[:20])
    out, weights = {}, {}
    for impl in ("fast", "reference"):
        cfg = fc.Config(epochs=2, batch_size=20, image_size=4, kernel=3, iterations=3,
                        score_from=2, score_to=3, softmax_epochs=1, eval_batch_size=60,
                        eval_train_limit=20, dtype="float32", impl=impl, block=(2, 2))
        run = Run(tmp_path / impl, "ff-cifar10", {}, quiet=True)
        out[impl] = fc.train_ff(cfg, data, 2, "max_ssq", run.stage("ff"))
        _, state = Run(tmp_path / impl, "ff-cifar10", {}, quiet=True, resume=True
                       ).stage("ff").resume_state()
        weights[impl] = state["net"]
    for k, v in weights["reference"].items():
        torch.testing.assert_close(weights["fast"][k], v, atol=1e-5, rtol=1e-4, msg=k)
    for mode in ("every_label", "softmax"):
        assert out["fast"][mode] == out["reference"][mode]
