"""Distillation, label noise and jitter: hand-computed cases, and short runs that must learn."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mortal.data.augment import jitter
from mortal.data.labels import corrupt_labels, label_mutual_information
from mortal.recipes.distill_omitted_mnist import best_shift, label_free_shift, shifted_errors
from mortal.rules.distill import cache_key, cached, distill_loss, soften
from tests.conftest import needs_mnist


def test_distill_loss_hand_computed():
    # teacher probabilities (0.75, 0.25) at T, student (0.5, 0.5):
    # KL = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812, times T^2
    s = torch.zeros(1, 2)
    for t in (1.0, 2.0, 5.0):
        teacher = torch.tensor([[t * math.log(3.0), 0.0]])
        assert soften(teacher, t)[0, 0].item() == pytest.approx(0.75)
        got = distill_loss(s, teacher, t).item()
        assert got == pytest.approx(0.130812 * t * t, rel=1e-5)
    # half soft (T=2), half hard cross-entropy with label 0: 0.5*0.523248 + 0.5*ln 2
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])
    got = distill_loss(s, teacher, 2.0, torch.tensor([0]), hard_weight=0.5).item()
    assert got == pytest.approx(0.5 * 0.523248 + 0.5 * math.log(2.0), rel=1e-5)


def test_distill_loss_zero_when_student_matches():
    z = torch.randn(4, 10)
    assert distill_loss(z.clone(), z, 20.0).item() == pytest.approx(0.0, abs=1e-5)


def _soft_grad(temperature: float, scale: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 10, generator=g)
    z = (z - z.mean(1, keepdim=True)).requires_grad_()
    v = torch.randn(8, 10, generator=g)
    v = v - v.mean(1, keepdim=True)
    loss = distill_loss(z, v, temperature)
    if not scale:
        loss = loss / temperature**2
    loss.backward()
    return z.grad


def test_t_squared_keeps_gradient_size_fixed():
    """With the T^2 factor the gradient tends to (z - v) / (N * batch) as T grows, the same for
    every large T; without it, it shrinks as 1 / T^2 (the paper's reason for the factor)."""
    g20, g50 = _soft_grad(20.0, True), _soft_grad(50.0, True)
    assert g20.norm() / g50.norm() == pytest.approx(1.0, rel=0.02)
    u20, u50 = _soft_grad(20.0, False), _soft_grad(50.0, False)
    assert u20.norm() / u50.norm() == pytest.approx((50 / 20) ** 2, rel=0.02)
    # the high-temperature limit: d/dz T^2 KL = T (q - p) ~ (z - v) / N, over a batch of 8
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 10, generator=g)
    z = z - z.mean(1, keepdim=True)
    v = torch.randn(8, 10, generator=g)
    v = v - v.mean(1, keepdim=True)
    torch.testing.assert_close(_soft_grad(1000.0, True), (z - v) / (10 * 8), atol=1e-4,
                               rtol=1e-2)


def test_corrupted_labels_are_never_the_true_one_and_rate_is_p():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (200_000,), generator=g)
    assert (corrupt_labels(y, 1.0, 10, g) != y).all()
    assert (corrupt_labels(y, 0.0, 10, g) == y).all()
    noisy = corrupt_labels(y, 0.3, 10, g)
    assert (noisy != y).float().mean().item() == pytest.approx(0.3, abs=0.005)
    # uniform over the nine wrong labels
    shift = ((noisy - y) % 10)[noisy != y]
    counts = torch.bincount(shift, minlength=10)[1:].float()
    assert (counts / counts.mean() - 1).abs().max() < 0.05


def test_corrupt_labels_rejects_bad_p():
    with pytest.raises(ValueError):
        corrupt_labels(torch.zeros(3, dtype=torch.long), 1.5)


def _mi_by_enumeration(p: float, k: int = 10) -> float:
    joint = torch.full((k, k), p / (k - 1) / k, dtype=torch.float64)
    joint.fill_diagonal_(1 - p).div_(1)
    joint[torch.eye(k, dtype=torch.bool)] = (1 - p) / k
    px, py = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * torch.log2(joint[nz] / (px @ py)[nz])).sum())


def test_mutual_information_known_values():
    assert label_mutual_information(0.0) == pytest.approx(math.log2(10))
    assert label_mutual_information(0.9) == pytest.approx(0.0, abs=1e-12)
    assert label_mutual_information(0.8) == pytest.approx(0.0641, abs=5e-4)  # "0.06 bits"
    assert label_mutual_information(0.0, n_classes=2) == pytest.approx(1.0)
    for p in (0.1, 0.37, 0.5, 0.8, 0.95):
        assert label_mutual_information(p) == pytest.approx(_mi_by_enumeration(p), abs=1e-9)
    ps = [i / 100 for i in range(91)]
    mis = [label_mutual_information(p) for p in ps]
    assert all(a > b for a, b in zip(mis[:-1], mis[1:], strict=True))


def test_jitter_moves_each_image_by_at_most_max_shift():
    x = torch.zeros(2000, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0
    out = jitter(x.reshape(2000, -1), 2, (1, 28, 28), torch.Generator().manual_seed(0))
    out = out.reshape(2000, 28, 28)
    assert (out.sum((1, 2)) == 1).all()  # nothing lost away from the border
    pos = out.reshape(2000, -1).argmax(1)
    rows, cols = pos // 28, pos % 28
    assert (rows - 14).abs().max() == 2 and (cols - 14).abs().max() == 2
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == 25  # every offset used
    assert torch.equal(jitter(x.reshape(2000, -1), 0), x.reshape(2000, -1))


def test_bias_corrections_on_a_hand_made_case():
    # three images of digit 1 that the student calls 0 unless digit 1's logit gains > 1
    logits = torch.tensor([[2.0, 1.0], [2.0, 0.5], [3.0, 0.0], [0.0, 5.0]])
    y = torch.tensor([1, 1, 0, 1])
    assert shifted_errors(logits, y, 1, 0.0) == (2, 2)
    shifts = torch.arange(0, 5.01, 0.25)
    s = best_shift(logits, y, 1, shifts)
    assert 1.5 < s < 3.0 and shifted_errors(logits, y, 1, s) == (0, 0)
    assert label_free_shift(logits, 1, shifts, share=0.5) == pytest.approx(1.25)


def test_cache_reuses_and_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setenv("MORTAL_CACHE", str(tmp_path))
    calls = []

    def make():
        calls.append(1)
        return {"w": torch.ones(3), "note": "x"}

    key = cache_key(a=1, b=[2, 3])
    assert key == cache_key(b=[2, 3], a=1) != cache_key(a=2, b=[2, 3])
    v1, p1 = cached(key, make)
    v2, p2 = cached(key, make)
    assert len(calls) == 1 and p1 == p2 and torch.equal(v2["w"], torch.ones(3))
    p1.write_bytes(b"garbage")  # a damaged entry is rebuilt, not trusted
    cached(key, make)
    assert len(calls) == 2


@needs_mnist
def test_distill_recipe_runs_and_resumes(tmp_path):
    from mortal.cli import main

    out = tmp_path / "d"
    args = ["run", "distill-mnist", "--quiet", "--out", str(out), "--set", "teacher_epochs=4",
            "--set", "epochs=4", "--set", "train_limit=3000", "--set", "sweep_temperatures=4"]
    assert main(args) == 0
    r = json.loads((out / "results.json").read_text())
    assert set(r["test_errors"]) == {"teacher", "student_alone", "distilled"}
    assert set(r["temperature_sweep"]) == {"4", "20"}
    print(r["test_errors"], r["temperature_sweep"])
    assert r["teacher_test_error_pct"] < 15  # it learned from 3000 images
    assert (out / "table.md").exists() and (out / "temperature_sweep.png").exists()
    # resuming a finished run redoes nothing and gives the same numbers
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["test_errors"] == r["test_errors"]


@needs_mnist
def test_noisy_labels_student_beats_its_teacher(tmp_path):
    """With half the labels wrong, a net trained on 6000 of them is right far more often than
    its labels are."""
    from mortal.cli import main

    out = tmp_path / "n"
    assert main(["run", "noisy-labels-mnist", "--quiet", "--out", str(out), "--set",
                 "train_limit=6000", "--set", "p_values=0.5", "--set", "epochs=4", "--set",
                 "mi_base_sizes=300", "--set", "mi_p_values=0.5", "--set", "mi_factors=1",
                 "--set", "min_steps=200"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["accuracy_vs_p"]["0.5"] > 85.0
    assert r["mi_comparison"][0]["n"] == round(300 * math.log2(10) /
                                               label_mutual_information(0.5))
    assert (out / "accuracy_vs_p.png").exists()
