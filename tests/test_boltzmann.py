"""Boltzmann machines: CD gradient, log Z, GRBM sampling, greedy stacking, short learning."""

from __future__ import annotations

import itertools
import math

import torch

from mortal.rules import boltzmann as bz
from tests.conftest import needs_mnist


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_cd1_gradient_matches_hand_computed_expectation():
    # 2 visible, 1 hidden. The CD-1 estimate from v0 = (1, 0) is random; its expectation is
    # E[v0 h0p - v1 h1p] over h0 ~ p(h|v0), v1 ~ p(v|h0), computed here by enumeration.
    w, b, c = [0.5, -1.0], [0.2, -0.3], 0.1
    v0 = [1.0, 0.0]
    p_h0 = sig(v0[0] * w[0] + v0[1] * w[1] + c)  # sigmoid(0.6)
    exp_w, exp_b, exp_c = [v * p_h0 for v in v0], list(v0), p_h0
    for h0 in (0, 1):
        ph = p_h0 if h0 else 1 - p_h0
        pv = [sig(b[i] + w[i] * h0) for i in range(2)]
        for v1 in itertools.product((0, 1), repeat=2):
            pr = ph * math.prod(pv[i] if v1[i] else 1 - pv[i] for i in range(2))
            h1p = sig(v1[0] * w[0] + v1[1] * w[1] + c)
            for i in range(2):
                exp_w[i] -= pr * v1[i] * h1p
                exp_b[i] -= pr * v1[i]
            exp_c -= pr * h1p
    assert abs(p_h0 - 0.6456563) < 1e-6
    rbm = bz.RBM(torch.tensor([[0.5], [-1.0]]), torch.tensor(b), torch.tensor([c]))
    g = torch.Generator().manual_seed(0)
    grads, _, _ = bz.cd_gradient(rbm, torch.tensor([v0]).expand(200_000, 2), 1, None, g)
    assert torch.allclose(grads["w"][:, 0], torch.tensor(exp_w), atol=5e-3)
    assert torch.allclose(grads["b"], torch.tensor(exp_b), atol=5e-3)
    assert abs(float(grads["c"][0]) - exp_c) < 5e-3


def test_exact_log_z_by_hand_and_ais_matches_it():
    # one visible, one hidden unit: Z = 1 + e^b + e^c + e^(b + c + w)
    rbm = bz.RBM(torch.tensor([[0.7]]), torch.tensor([-0.4]), torch.tensor([0.3]))
    assert abs(bz.log_z_exact(rbm) - math.log(1 + math.exp(-0.4) + math.exp(0.3)
                                              + math.exp(0.6))) < 1e-9
    g = torch.Generator().manual_seed(0)
    rbm = bz.RBM(torch.randn(12, 8, generator=g) * 1.5, torch.randn(12, generator=g),
                 torch.randn(8, generator=g))
    exact = bz.log_z_exact(rbm)
    res = bz.ais_log_z(rbm, torch.zeros(12), bz.ais_betas(50, 200, 200), n_runs=200, seed=1)
    assert abs(res.log_z - exact) < 0.1
    assert res.log_z_low < exact < res.log_z_high
    # the exact log-likelihood of the data under the same RBM, two ways
    v = (torch.rand(50, 12, generator=g) < 0.5).float()
    states = bz._all_states(12)
    log_p = -bz.free_energy(rbm, states).double() - exact
    assert abs(float(torch.logsumexp(log_p, 0))) < 1e-6  # probabilities sum to one
    assert abs(bz.mean_log_prob(rbm, v, exact) - float((-bz.free_energy(rbm, v) - exact).mean())
               ) < 1e-4


def test_raise_bounds_the_exact_log_probability_and_log_z_lower_bound():
    # RAISE's per-example estimate against log p(v) = -F(v) - log Z by enumeration: close with
    # 50 reverse chains, and below it (in expectation) with a single chain.
    g = torch.Generator().manual_seed(0)
    rbm = bz.RBM(torch.randn(12, 8, generator=g) * 1.5, torch.randn(12, generator=g),
                 torch.randn(8, generator=g))
    exact = bz.log_z_exact(rbm)
    v = (torch.rand(20, 12, generator=g) < 0.5).float()
    log_p = -bz.free_energy(rbm, v).double() - exact
    betas = bz.ais_betas(50, 200, 200)
    many = bz.raise_log_prob(rbm, torch.zeros(12), v, betas, n_chains=50, seed=1)
    assert abs(float((many - log_p).mean())) < 0.05 and float((many - log_p).abs().max()) < 0.3
    one = bz.raise_log_prob(rbm, torch.zeros(12), v, betas, n_chains=1, seed=1)
    assert float((one - log_p).mean()) < 0.02  # measured -0.09: a lower bound
    # the sure bound: every state gives log Z itself, a subset less
    assert abs(bz.log_z_lower_bound(rbm, bz._all_states(12)) - exact) < 1e-6
    assert bz.log_z_lower_bound(rbm, torch.cat([v, v])) < exact - 1


def _grbm_exact_samples(m: bz.GRBM, n: int, g: torch.Generator) -> torch.Tensor:
    """p(h) ∝ exp(c.h + sum(((mu + w h)^2 - mu^2) / (2 var))), then v | h ~ N(mu + w h, var)."""
    hs = bz._all_states(m.w.shape[1])
    var = m.log_var.exp()
    means = m.mu + hs @ m.w.T
    logits = hs @ m.c + ((means**2 - m.mu**2) / (2 * var)).sum(1)
    pick = torch.multinomial(torch.softmax(logits, 0), n, replacement=True, generator=g)
    return means[pick] + var.sqrt() * torch.randn(n, m.w.shape[0], generator=g)


def test_gibbs_langevin_leaves_a_gaussian_mixture_grbm_stationary():
    # 2 visible, 2 hidden units: a mixture of 4 Gaussians with known weights
    m = bz.GRBM(torch.tensor([[1.5, -1.0], [0.5, 1.2]]), torch.tensor([0.2, -0.1]),
                torch.tensor([-0.5, 0.3]), torch.log(torch.tensor([0.3, 0.5])))
    g = torch.Generator().manual_seed(0)
    v0 = _grbm_exact_samples(m, 20_000, g)
    v = bz.gibbs_langevin(m, v0, steps=30, step_size=0.05, g=g)
    ref = _grbm_exact_samples(m, 20_000, g)
    assert torch.allclose(v.mean(0), ref.mean(0), atol=0.04)
    assert torch.allclose(torch.cov(v.T), torch.cov(ref.T), atol=0.05)


def test_greedy_stacking_trains_each_layer_on_the_previous_posterior():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(400, 20, generator=g) < 0.3).float()
    labels = torch.eye(3)[torch.randint(0, 3, (400,), generator=g)]
    for mode in ("means", "samples"):
        seen: list[torch.Tensor] = []

        def fake_train(rbm: bz.RBM, inputs: torch.Tensor, i: int,
                       seen: list[torch.Tensor] = seen) -> None:
            seen.append(inputs.clone())
            rbm.w.normal_(0, 1, generator=g)  # "training" changes the weights
            rbm.c.normal_(0, 1, generator=g)

        rbms = bz.greedy_stack(x, [10, 6, 8], fake_train, mode, top_labels=labels)
        assert [r.n_vis for r in rbms] == [20, 10, 6 + 3] and rbms[-1].n_softmax == 3
        assert torch.equal(seen[0], x)
        for i in (1, 2):
            post = torch.sigmoid(seen[i - 1] @ rbms[i - 1].w + rbms[i - 1].c)
            if mode == "means":
                assert torch.allclose(seen[i], post, atol=1e-6)
            else:
                assert set(seen[i].unique().tolist()) <= {0.0, 1.0}
                assert abs(float(seen[i].mean() - post.mean())) < 0.03


def test_label_free_energies_match_the_free_energy_with_labels_clamped():
    g = torch.Generator().manual_seed(0)
    top = bz.RBM(torch.randn(7, 5, generator=g), torch.randn(7, generator=g),
                 torch.randn(5, generator=g), n_softmax=3)
    pen = (torch.rand(4, 4, generator=g) < 0.5).float()
    fe = bz.label_free_energies(top, pen)
    for lab in range(3):
        v = torch.cat([pen, torch.eye(3)[lab].expand(4, 3)], 1)
        assert torch.allclose(fe[:, lab], bz.free_energy(top, v), atol=1e-5)


@needs_mnist
def test_rbm_reconstruction_falls_and_dbn_readout_beats_80_percent():
    from mortal.recipes.common import load_split
    from mortal.recipes.rbm_mnist import readout_error

    torch.manual_seed(0)
    data = load_split("mnist", None, torch.device("cpu"), limit=3000)
    x, y = data.x_train, data.y_train
    errors: list[float] = []

    def train_layer(rbm: bz.RBM, inputs: torch.Tensor, i: int) -> None:
        for e in range(3):  # one epoch at a time, to watch the reconstruction error
            out = bz.train_rbm(rbm, inputs, bz.RBMTraining(
                epochs=1, batch_size=50, lr=0.1, momentum_start=0.5 if e == 0 else 0.9,
                seed=10 * i + e))
            errors.append(out["recon_error"]) if i == 0 else None

    rbms = bz.greedy_stack(x, [200, 200], train_layer, "means")
    assert errors[-1] < 0.8 * errors[0]
    feats = [bz.layer_input(rbms[1], bz.layer_input(rbms[0], s, "means"), "means")
             for s in (x, data.x_test[:2000])]
    err = readout_error(feats[0], y, feats[1], data.y_test[:2000], epochs=30, seed=0)
    assert err < 20.0  # measured: 17.1 % with these settings (raw pixels: 14.0 %)


def test_linear_lr_decay_falls_to_zero_over_the_run_by_hand():
    # 2 epochs of 4 updates: update j of 8 gets lr * (1 - j/8)
    cfg = bz.RBMTraining(epochs=2, lr=0.1, lr_decay="linear")
    got = [cfg.lr_at(e, i, 4) for e in range(2) for i in range(4)]
    want = [0.1, 0.0875, 0.075, 0.0625, 0.05, 0.0375, 0.025, 0.0125]
    assert all(abs(a - b) < 1e-12 for a, b in zip(got, want, strict=True))
    assert bz.RBMTraining(epochs=2, lr=0.1).lr_at(1, 3, 4) == 0.1  # constant


def test_train_rbm_takes_the_decayed_rate_with_no_momentum():
    # one update, momentum 0, no weight cost: the step is lr_at(0, 0, 1) times the CD gradient
    # with the same random stream, and the decayed rate of a 2-epoch run's second epoch is half
    x = (torch.rand(10, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    r0 = bz.RBM.init(6, 3, seed=0)
    steps = {}
    for decay in ("constant", "linear"):
        rbm = bz.RBM.init(6, 3, seed=0)
        bz.train_rbm(rbm, x, bz.RBMTraining(epochs=2, batch_size=10, lr=0.1, momentum_start=0.0,
                                            momentum_end=0.0, weight_decay=0.0, dtype="float32",
                                            lr_decay=decay))
        steps[decay] = rbm.w - r0.w
    # same two CD gradients g1, g2: constant 0.1 (g1 + g2), linear 0.1 g1 + 0.05 g2
    g = torch.Generator().manual_seed(0)
    rbm = bz.RBM.init(6, 3, seed=0)
    grads = []
    for e in range(2):
        order = bz.epoch_order(10, 0, e, x.device)
        gr, _, _ = bz.cd_gradient(rbm, x[order], 1, None, g, "float32")
        grads.append(gr["w"])
        for key, p in rbm.state().items():
            p.add_(gr[key], alpha=0.1 if e == 0 else 0.05)
    assert torch.allclose(steps["linear"], 0.1 * grads[0] + 0.05 * grads[1], atol=1e-6)
    assert not torch.allclose(steps["linear"], steps["constant"], atol=1e-4)


def test_dbn_mnist_label_free_top_validates_and_reads_the_top_layer(tmp_path):
    from mortal.recipes import dbn_mnist, rbm_mnist

    assert dbn_mnist.Config(top_labels=False).validate()  # up-down and backprop need labels
    assert not dbn_mnist.Config(top_labels=False, updown_epochs=0, bp_epochs=0).validate()
    assert rbm_mnist.Config(init_from=str(tmp_path)).validate()  # no checkpoint there
    g = torch.Generator().manual_seed(0)
    rbms = [bz.RBM(torch.randn(4, 3, generator=g), torch.zeros(4), torch.randn(3, generator=g)),
            bz.RBM(torch.randn(3, 2, generator=g), torch.zeros(3), torch.randn(2, generator=g))]
    dbn = bz.DBN.from_stack(rbms)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    pen = torch.sigmoid(x @ rbms[0].w + rbms[0].c)
    want = torch.sigmoid(pen @ rbms[1].w + rbms[1].c)
    assert torch.allclose(dbn_mnist.top_features(dbn, x), want, atol=1e-6)


def test_standard_results_has_no_throughput_without_epochs():
    """A headline stage that ran no epochs (dbn-mnist with updown_epochs=0) reports no
    examples/s rather than 0."""
    from types import SimpleNamespace

    from mortal.recipes import dbn_mnist
    from mortal.recipes.common import standard_results

    run = SimpleNamespace(train_seconds=12.0)
    cfg = dbn_mnist.Config(updown_epochs=0, train_limit=1000)
    assert standard_results(dbn_mnist.RECIPE, cfg, run, 1000, 5.0)["examples_per_second"] is None
    cfg = dbn_mnist.Config(updown_epochs=3, train_limit=1000)
    assert standard_results(dbn_mnist.RECIPE, cfg, run, 1000, 5.0)["examples_per_second"] == 250


@needs_mnist
def test_dbn_mnist_resume_keeps_finished_greedy_layers_results(tmp_path):
    """Resuming a run whose greedy layers are finished reloads their weights and keeps each
    layer's recorded reconstruction error (it was overwritten with NaN before)."""
    import json

    from mortal.recipes import dbn_mnist
    from mortal.runs import Run

    cfg = dbn_mnist.Config(widths=(30, 20), greedy_epochs=1, updown_epochs=0, bp_epochs=0,
                           readout_epochs=1, train_limit=600, dtype="float32")
    first = dbn_mnist.train(cfg, Run(tmp_path / "r", "dbn-mnist", {}, quiet=True))
    stage = tmp_path / "r" / "stages" / "greedy-1" / "stage.json"
    before = json.loads(stage.read_text())
    again = dbn_mnist.train(cfg, Run(tmp_path / "r", "dbn-mnist", {}, quiet=True, resume=True))
    after = json.loads(stage.read_text())
    assert math.isfinite(before["recon_error"]) and after == before
    assert again["greedy_readout_test_error_pct"] == first["greedy_readout_test_error_pct"]


def _small_dbn() -> bz.DBN:
    return bz.DBN.from_stack([bz.RBM.init(12, 8, 1), bz.RBM.init(8 + 3, 6, 2, n_softmax=3)])


def test_updown_momentum_first_step_is_sgd_and_resume_keeps_the_velocity(tmp_path):
    """The velocity starts as the first step's statistics, so step 1 with momentum equals plain
    SGD; a momentum run stopped after one epoch and resumed ends where an unbroken one does."""
    from mortal.runs import Run

    g = torch.Generator().manual_seed(0)
    x = bz.bernoulli(torch.full((40, 12), 0.4), g)
    y = torch.nn.functional.one_hot(torch.arange(40) % 3, 3).float()
    plain, smooth = _small_dbn(), _small_dbn()
    bz.updown_step(plain, x, y, 2, 0.1, torch.Generator().manual_seed(1), weight_decay=0.01)
    vel: dict[str, torch.Tensor] = {}
    bz.updown_step(smooth, x, y, 2, 0.1, torch.Generator().manual_seed(1), weight_decay=0.01,
                   momentum=0.9, velocity=vel)
    assert set(vel) == set(bz.updown_params(smooth))
    for a, b in zip(bz.updown_params(plain).values(), bz.updown_params(smooth).values(),
                    strict=True):
        torch.testing.assert_close(a, b)
    # a second step moves by lr * (momentum * first statistics + second statistics) != SGD's
    before = {k: p.clone() for k, p in bz.updown_params(smooth).items()}
    first = {k: v.clone() for k, v in vel.items()}
    bz.updown_step(smooth, x, y, 2, 0.1, torch.Generator().manual_seed(2), weight_decay=0.01,
                   momentum=0.9, velocity=vel)
    for k, p in bz.updown_params(smooth).items():
        torch.testing.assert_close(p - before[k], 0.1 * vel[k])
        assert not torch.allclose(vel[k], first[k])

    cfg = dict(batch_size=10, lr=0.05, momentum=0.9, lr_decay="constant", dtype="float32",
               seed=3)
    whole = _small_dbn()
    bz.train_updown(whole, x, y, bz.UpDownTraining(epochs=2, **cfg), Run(tmp_path / "a", "t", {},
                                                                         quiet=True))
    part = _small_dbn()
    bz.train_updown(part, x, y, bz.UpDownTraining(epochs=1, **cfg), Run(tmp_path / "b", "t", {},
                                                                        quiet=True))
    resumed = _small_dbn()  # fresh weights: everything must come from the checkpoint
    bz.train_updown(resumed, x, y, bz.UpDownTraining(epochs=2, **cfg),
                    Run(tmp_path / "b", "t", {}, quiet=True, resume=True))
    for a, b in zip(bz.updown_params(whole).values(), bz.updown_params(resumed).values(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_updown_linear_decay_takes_each_updates_rate(tmp_path):
    """lr_decay="linear": update j of n gets lr (1 - j/n), as a hand-written loop over the
    same batches and random stream gives."""
    from mortal.loop import epoch_order
    from mortal.runs import Run

    g = torch.Generator().manual_seed(0)
    x = bz.bernoulli(torch.full((40, 12), 0.4), g)
    y = torch.nn.functional.one_hot(torch.arange(40) % 3, 3).float()
    cfg = bz.UpDownTraining(epochs=1, batch_size=10, lr=0.1, lr_decay="linear", k_schedule=(2,),
                            momentum=0.0, dtype="float32", seed=3)
    trained = _small_dbn()
    bz.train_updown(trained, x, y, cfg, Run(tmp_path / "r", "t", {}, quiet=True))
    by_hand = _small_dbn()
    rng = torch.Generator().manual_seed(3 + 777)
    order = epoch_order(40, 3 + 31, 0)
    for i in range(4):
        idx = order[i * 10 : (i + 1) * 10]
        bz.updown_step(by_hand, x[idx], y[idx], 2, 0.1 * (1 - i / 4), rng, "float32",
                       cfg.weight_decay)
    for a, b in zip(bz.updown_params(trained).values(), bz.updown_params(by_hand).values(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert bz.decayed_lr(0.1, "linear", 2, 8) == 0.1 * 0.75 and bz.decayed_lr(0.1, "constant",
                                                                               7, 8) == 0.1


def test_dbn_mnist_greedy_from_reuses_a_finished_stack(tmp_path):
    """greedy_from: a second run fine-tunes the first run's greedy stack instead of training
    its own (the same stack, so the same greedy readout); other widths are refused."""
    import pytest

    from mortal.config import ConfigError
    from mortal.recipes import dbn_mnist
    from mortal.runs import Run

    cfg = dbn_mnist.Config(widths=(30, 20), greedy_epochs=1, updown_epochs=0, bp_epochs=0,
                           readout_epochs=1, train_limit=600, dtype="float32")
    first = dbn_mnist.train(cfg, Run(tmp_path / "a", "dbn-mnist", {}, quiet=True))
    cfg.greedy_from = str(tmp_path / "a")
    assert not cfg.validate()
    again = dbn_mnist.train(cfg, Run(tmp_path / "b", "dbn-mnist", {}, quiet=True))
    assert again["greedy_test_error_pct"] == first["greedy_test_error_pct"]
    assert again["greedy_readout_test_error_pct"] == first["greedy_readout_test_error_pct"]
    assert not (tmp_path / "b" / "stages").exists()  # nothing trained here
    cfg.widths = (30, 25)
    with pytest.raises(ConfigError, match="greedy_from"):
        dbn_mnist.train(cfg, Run(tmp_path / "c", "dbn-mnist", {}, quiet=True))
    assert dbn_mnist.Config(greedy_from=str(tmp_path / "nowhere")).validate()
