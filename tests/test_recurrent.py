"""The recurrent FF net of the paper's §4: the damped synchronous update, losses that stay
within their layer, and a short learning test."""

from __future__ import annotations

import pytest
import torch

from mortal.arch.recurrent import LocalRecurrentStack, RecurrentStack
from mortal.recipes import ff_recurrent_mnist as rec
from mortal.rules.ff import normalise
from tests.conftest import needs_mnist


def test_one_iteration_by_hand():
    torch.manual_seed(0)
    net = RecurrentStack(6, [4, 3], n_classes=2, damping=0.3, label_scale=2.5)
    x, y = torch.rand(5, 6), torch.eye(2)[torch.tensor([0, 1, 1, 0, 1])]
    h1, h2 = torch.rand(5, 4), torch.rand(5, 3)
    new1, new2 = net.step([h1, h2], x, y)
    w1, b1 = net.layers[0].linear.weight, net.layers[0].linear.bias
    w2, b2 = net.layers[1].linear.weight, net.layers[1].linear.bias
    # layer 1 reads the image below and layer 2 above; layer 2 reads layer 1 and the label
    want1 = 0.3 * h1 + 0.7 * torch.relu(torch.cat([normalise(x), normalise(h2)], 1) @ w1.T + b1)
    want2 = 0.3 * h2 + 0.7 * torch.relu(torch.cat([normalise(h1), 2.5 * normalise(y)], 1)
                                        @ w2.T + b2)
    torch.testing.assert_close(new1, want1)
    torch.testing.assert_close(new2, want2)
    # the start: one bottom-up pass with no top-down input
    s1, s2 = net.initial(x)
    torch.testing.assert_close(s1, torch.relu(normalise(x) @ w1[:, :6].T + b1))
    torch.testing.assert_close(s2, torch.relu(normalise(s1) @ w2[:, :4].T + b2))


def test_each_layer_loss_reaches_only_its_own_layer():
    torch.manual_seed(0)
    cfg = rec.Config(widths=(8, 8, 8), iterations=3, dtype="float32")
    net = RecurrentStack(20, cfg.widths)
    x, y = torch.rand(6, 20), torch.randint(0, 10, (6,))
    losses = rec.layer_losses(net, x, y, (y + 1) % 10, cfg)
    for j, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, [layer.linear.weight for layer in net.layers],
                                    retain_graph=True, allow_unused=True)
        for k, g in enumerate(grads):
            assert (g is not None and g.abs().sum() > 0) == (j == k)


@needs_mnist
def test_recurrent_ff_learns_an_mnist_subset(tmp_path):
    """2x200 units, 2000 training images, 3 epochs, 4 iterations: measured 2026-11-25 at
    17.4 % test error on all 10,000 test images (8 s of CPU; chance is 90 %)."""
    from mortal.runs import Run

    cfg = rec.Config(widths=(200, 200), epochs=3, batch_size=100, iterations=4, score_from=2,
                     score_to=4, hard_negatives_every=0, eval_every=100, train_limit=2000,
                     lr=1e-3, input_dropout=0.0, dtype="float32")
    run = Run(tmp_path / "r", "ff-recurrent-mnist", {}, quiet=True)
    out = rec.train(cfg, run)
    assert out["test_error_pct"] < 30
    assert out["train_error_pct"] < out["test_error_pct"]  # the 2000 images it learned from
    assert set(out["test_error_by_single_iteration"]) == {"1", "2", "3", "4"}
    assert len(out["silent_units_pct"]) == 2 and all(0 <= v < 100 for v in out["silent_units_pct"])
    # input dropout: other inputs, so another net, that still learns
    cfg.input_dropout = 0.2
    assert not cfg.validate()
    drop = rec.train(cfg, Run(tmp_path / "d", "ff-recurrent-mnist", {}, quiet=True))
    assert drop["test_error_pct"] < 30 and drop["test_error_pct"] != out["test_error_pct"]
    assert rec.Config(input_dropout=1.0).validate()


class _FlatInputs(LocalRecurrentStack):
    """The local stack without the fixed-image reuse: every layer gets one flat input."""

    def initial(self, x):
        states, h = [], x
        for j, layer in enumerate(self.layers):
            n_above = self.widths[j + 1] if j + 1 < len(self.widths) else 0
            zeros = h.new_zeros(len(h), *self.hw, n_above // (self.hw[0] * self.hw[1]))
            inp = torch.cat([self._map(h, h.dtype), zeros], dim=3).flatten(1)
            if layer.label is not None:
                inp = torch.cat([inp, h.new_zeros(len(h), layer.label.in_features)], dim=1)
            h = layer(inp)
            states.append(h)
        return states

    def inputs(self, states, x, y):
        below, above = [x, *states[:-1]], [*states[1:], None]
        return [self._input(b, a, y, states[0].dtype) for b, a in zip(below, above, strict=True)]


@pytest.mark.parametrize("depth,impl", [(2, "band"), (3, "gather"), (1, "band")])
def test_fixed_image_part_is_reused_with_the_same_losses_and_gradients(depth, impl):
    """The first map computes the image's contribution once per run (SplitInput) and autograd
    sums its gradient over the iterations: losses, weight gradients and evaluation runs equal
    those of flat inputs recomputed at every iteration."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(iterations=4, dtype="float32", loss="pairwise",
                          temperature=2.0, threshold=1.0)
    nets = []
    for cls in (LocalRecurrentStack, _FlatInputs):
        torch.manual_seed(3)
        nets.append(cls((3, 8, 8), [2] * depth, 3, impl=impl, band_width=4))
    torch.manual_seed(4)
    x, y = torch.randn(6, 8 * 8 * 3), torch.randint(0, 10, (6,))
    losses = []
    for net in nets:
        ls = rec.layer_losses(net, x, y, (y + 3) % 10, cfg)
        sum(ls).backward()
        losses.append(torch.stack(ls).detach())
    torch.testing.assert_close(losses[0], losses[1])
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        g = [rec.goodness_by_iteration(net, x, cfg, 3) for net in nets]
    torch.testing.assert_close(g[0], g[1])


@pytest.mark.parametrize("loss,act,widths,label_scale,peer_weight", [
    ("pairwise", "relu", (8, 6), 1.0, 0.0), ("threshold", "relu_st", (8, 6, 5), 1.0, 0.0),
    ("pairwise", "relu", (7,), 3.0, 0.0), ("pairwise", "relu_st", (8, 6), 1.0, 5.0),
    ("threshold", "relu", (8, 6, 5), 1.0, 5.0),
])
def test_fast_gradients_equal_autograd(loss, act, widths, label_scale, peer_weight):
    """mortal.rules.ff_recurrent's hand-written step gives the reference's losses and weight
    and bias gradients (autograd through layer_losses), fp32; with peer normalisation also the
    same running means, over two steps (the second starts from the first's means)."""
    from mortal.rules import ff_recurrent

    torch.manual_seed(0)
    cfg = rec.Config(widths=widths, iterations=4, dtype="float32", loss=loss, temperature=2.0)
    net = RecurrentStack(20, cfg.widths, act=act, label_scale=label_scale)
    assert ff_recurrent.supports(net)
    peers = [ff_recurrent.Peer(peer_weight) if peer_weight else None for _ in range(2)]
    for _ in range(2 if peer_weight else 1):
        x, y = torch.rand(6, 20), torch.randint(0, 10, (6,))
        y_neg = (y + torch.randint(1, 10, (6,))) % 10
        net.zero_grad(set_to_none=True)
        ref = rec.layer_losses(net, x, y, y_neg, cfg, peer=peers[0])
        sum(ref).backward()
        want = [p.grad.clone() for p in net.parameters()]
        net.zero_grad(set_to_none=True)
        got = ff_recurrent.layer_gradients(net, x, y, y_neg, cfg, peer=peers[1])
        for a, b in zip(ref, got, strict=True):
            assert a.item() == pytest.approx(b.item(), rel=1e-5)
        for a, p in zip(want, net.parameters(), strict=True):
            torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-6)
        if peer_weight:
            for a, b in zip(peers[0].means, peers[1].means, strict=True):
                torch.testing.assert_close(a, b)


def test_peer_term_by_hand():
    """One layer, one iteration, running mean m0: the peer term is weight * mean over units of
    (new - mean(new))^2 with new = 0.9 m0 + 0.1 (mean positive activity), and the running
    mean moves to new."""
    from mortal.rules import ff_recurrent

    torch.manual_seed(0)
    cfg = rec.Config(widths=(3,), iterations=1, dtype="float32", temperature=2.0)
    net = RecurrentStack(4, cfg.widths)
    x, y = torch.rand(2, 4), torch.tensor([1, 2])
    y_neg = torch.tensor([0, 0])
    plain = rec.layer_losses(net, x, y, y_neg, cfg)[0]
    m0 = torch.tensor([0.5, 0.0, 1.0])
    peer = ff_recurrent.Peer(2.0, means=[m0.clone()])
    with_peer = rec.layer_losses(net, x, y, y_neg, cfg, peer=peer)[0]
    xx = torch.cat([x, x])
    h = net.step(net.initial(xx), xx, rec.one_hot(torch.cat([y, y_neg])))[0][:2]  # positives
    new = 0.9 * m0 + 0.1 * h.mean(0)
    want = 2.0 * ((new - new.mean()) ** 2).mean()
    torch.testing.assert_close(with_peer - plain, want)
    torch.testing.assert_close(peer.means[0], new.detach())


def test_fast_goodness_equals_reference():
    """Every label's goodness at every iteration: the one-run fast path (image part once for all
    labels) equals the reference's run per label, fp32."""
    from mortal.rules import ff_recurrent

    torch.manual_seed(0)
    cfg = rec.Config(widths=(8, 6), iterations=5, dtype="float32", impl="reference")
    net = RecurrentStack(20, cfg.widths, label_scale=2.0)
    x = torch.rand(7, 20)
    want = rec.goodness_by_iteration(net, x, cfg, 5, batch_size=4)
    got = ff_recurrent.goodness_by_iteration(net, x, cfg, 5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert rec.fast(net, rec.Config()) and not rec.fast(net, cfg)


def test_peer_means_are_checkpointed_and_a_resumed_run_ends_the_same(tmp_path):
    """A run stopped after epoch 1 and resumed ends with the uninterrupted run's weights and
    peer-normalisation means (without the means in the checkpoint the resumed run would restart
    them and end elsewhere)."""
    from mortal.loop import make_optimizer
    from mortal.rules import ff_recurrent
    from mortal.runs import Run

    cfg = rec.Config(widths=(8, 6), iterations=2, epochs=3, batch_size=10,
                     hard_negatives_every=0, dtype="float32", peer_weight=1.0)
    x, y = torch.rand(40, 20), torch.randint(0, 10, (40,))

    def go(out, stop: int | None = None, resume: bool = False):
        torch.manual_seed(0)
        net = RecurrentStack(20, cfg.widths, act="relu_st")
        opts = [make_optimizer("adam", layer.parameters(), 1e-2, 0.0) for layer in net.layers]
        peer = ff_recurrent.Peer(cfg.peer_weight)

        def on_epoch(epoch, row):
            if epoch == stop:
                raise KeyboardInterrupt  # before this epoch's checkpoint

        try:
            ff_recurrent.train_epochs(
                net, opts, x, y, cfg, Run(out, "t", {}, quiet=True, resume=resume),
                losses=lambda xb, yb, yn, g: rec.layer_losses(net, xb, yb, yn, cfg, peer=peer),
                apply=lambda out: rec.update(opts, out), scores=lambda xb: None, name="t",
                on_epoch=on_epoch, peer=peer)
        except KeyboardInterrupt:
            pass
        return net, peer

    whole, whole_peer = go(tmp_path / "whole")
    go(tmp_path / "cut", stop=1)
    resumed, resumed_peer = go(tmp_path / "cut", resume=True)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(whole_peer.means, resumed_peer.means, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_silent_units_are_counted_per_layer():
    """A unit whose bias keeps it below zero on every image is silent; the rest fire."""
    torch.manual_seed(0)
    net = RecurrentStack(6, [4, 3])
    with torch.no_grad():
        net.layers[1].linear.bias[0] = -100.0
        for layer in net.layers:  # every other unit fires on positive inputs
            layer.linear.weight.abs_()
    cfg = rec.Config(widths=(4, 3), iterations=4, score_from=2, score_to=3, dtype="float32")
    assert rec.silent_units_pct(net, torch.rand(5, 6), torch.randint(0, 10, (5,)), cfg) == \
        [0.0, 33.33]
