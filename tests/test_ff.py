"""Forward-Forward maths on hand-computed cases, layer locality, negatives, dtypes, learning."""

from __future__ import annotations

import math

import pytest
import torch

from mortal.arch.dense import dense_stack
from mortal.data.negatives import (
    WrongLabel,
    embed_label,
    embed_neutral,
    hard_wrong_labels,
    wrong_labels,
)
from mortal.rules import ff
from mortal.runs import NonFiniteError, Run

from .conftest import needs_mnist


def test_goodness_hand_computed():
    h = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    assert ff.sum_squares(h).tolist() == [5.0, 9.0]
    assert ff.neg_sum_squares(h).tolist() == [-5.0, -9.0]
    # Works on any activity shape: goodness sums over everything but the batch dimension.
    assert ff.sum_squares(torch.ones(2, 3, 4, 5)).tolist() == pytest.approx([60.0, 60.0])
    assert ff.sum_activities(h).tolist() == [3.0, 3.0]
    assert ff.sum_squares_plus_sum(h).tolist() == [8.0, 12.0]


def test_sum_goodness_pushes_silent_units_back():
    # A unit off (pre-activation -1) gets no gradient from the sum of squares (2h = 0) but a
    # unit push from the sum of activities (and from sum(h^2 + h): 2h + 1), through the
    # straight-through ReLU.
    from mortal.arch.dense import relu_st
    for fn, expected in ((ff.sum_squares, [0.0, 4.0]), (ff.sum_activities, [1.0, 1.0]),
                         (ff.sum_squares_plus_sum, [1.0, 5.0])):
        z = torch.tensor([[-1.0, 2.0]], requires_grad=True)
        fn(relu_st(z)).sum().backward()
        assert z.grad.tolist() == [expected]
    net = ff.FFNet(dense_stack(3, (5, 5)), ff.FFRule(goodness="sum", threshold=2.0))
    assert net.threshold(torch.ones(2, 5)) == 10.0


def test_loss_hand_computed():
    # p(pos) = sigmoid(g - theta): g_pos = 3 and g_neg = 1 around theta = 2 are both off by one.
    loss = ff.ff_loss(torch.tensor([3.0]), torch.tensor([1.0]), threshold=2.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # Temperature scales the logits: (3 - 2) / 0.5 = 2.
    loss_t = ff.ff_loss(torch.tensor([3.0]), torch.tensor([1.0]), threshold=2.0, temperature=0.5)
    assert loss_t.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    # Wrong side of the threshold costs more.
    bad = ff.ff_loss(torch.tensor([1.0]), torch.tensor([3.0]), threshold=2.0)
    assert bad.item() == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_pairwise_loss_hand_computed():
    # sigmoid((g_pos - g_neg) / T): a margin of 2 at T = 2 is a logit of 1.
    loss = ff.pairwise_loss(torch.tensor([5.0, 1.0]), torch.tensor([3.0, 3.0]), temperature=2.0)
    expected = 0.5 * (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_threshold_sign_follows_goodness():
    h = torch.ones(2, 5)
    pos_high = ff.FFNet(dense_stack(3, (5, 5)), ff.FFRule(goodness="sumsq", threshold=2.0))
    pos_low = ff.FFNet(dense_stack(3, (5, 5)), ff.FFRule(goodness="neg_sumsq", threshold=2.0))
    assert pos_high.threshold(h) == 10.0
    assert pos_low.threshold(h) == -10.0


def test_normalise_hand_computed():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    y = ff.normalise(x)
    rms = math.sqrt((9 + 16) / 2)
    assert y[0].tolist() == pytest.approx([3 / rms, 4 / rms], rel=1e-6)
    assert y[1].tolist() == [0.0, 0.0]  # eps keeps silent vectors finite
    assert ff.sum_squares(y[:1]).item() == pytest.approx(2.0)  # length sqrt(n)


def test_peer_loss_hand_computed():
    running = torch.tensor([1.0, 3.0])
    batch = torch.tensor([3.0, 1.0], requires_grad=True)
    loss, new = ff.peer_loss(running, batch, momentum=0.5)
    assert new.tolist() == [2.0, 2.0] and loss.item() == 0.0
    loss, new = ff.peer_loss(torch.tensor([0.0, 0.0]), batch, momentum=0.5)
    # new mean = [1.5, 0.5], layer average 1.0, deviations +-0.5: mean square 0.25
    assert new.tolist() == [1.5, 0.5] and loss.item() == pytest.approx(0.25)
    loss.backward()
    assert batch.grad is not None and batch.grad[0] > 0 > batch.grad[1]


def test_label_embedding():
    x = torch.rand(3, 20)
    y = torch.tensor([0, 4, 9])
    e = embed_label(x, y)
    assert torch.equal(e[:, 10:], x[:, 10:])
    assert torch.equal(e[:, :10], torch.eye(10)[y])
    n = embed_neutral(x)
    assert torch.allclose(n[:, :10], torch.full((3, 10), 0.1))
    assert torch.equal(n[:, 10:], x[:, 10:])


def test_wrong_labels_never_true_and_uniform():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat(9000)
    neg = wrong_labels(y, 10, g)
    assert not (neg == y).any()
    counts = torch.zeros(10, 10)
    counts.index_put_((y, neg), torch.ones(len(y)), accumulate=True)
    off = counts[~torch.eye(10, dtype=torch.bool)]
    # 9000 draws per true label over 9 wrong ones: 1000 each; 5 sigma is about +-150.
    assert off.min() > 850 and off.max() < 1150


def test_hard_wrong_labels_follow_scores():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(4000, dtype=torch.long)
    scores = torch.full((4000, 10), -10.0)
    scores[:, 0] = 50.0  # the true label is the favourite, and must still never be drawn
    scores[:, 3] = 1.0
    scores[:, 7] = 1.0
    neg = hard_wrong_labels(scores, y, g)
    assert not (neg == 0).any()
    frac = ((neg == 3) | (neg == 7)).float().mean().item()
    assert frac > 0.99
    assert 0.45 < (neg == 3).float().mean().item() < 0.55


def test_wrong_label_pair():
    pos, neg = WrongLabel()(torch.rand(5, 30), torch.tensor([1, 2, 3, 4, 5]),
                            torch.Generator().manual_seed(1))
    assert torch.equal(pos[:, :10].argmax(1), torch.tensor([1, 2, 3, 4, 5]))
    assert not torch.equal(neg[:, :10].argmax(1), pos[:, :10].argmax(1))


def _net(widths, dtype="float32", peer=0.03, seed=0):
    torch.manual_seed(seed)
    return ff.FFNet(dense_stack(20, widths, "relu_st", "fan_out"),
                    ff.FFRule(lr=0.05, dtype=dtype, peer_weight=peer))


@pytest.mark.parametrize("peer", [0.0, 0.03])
def test_no_gradient_crosses_layers(peer):
    """Layer 1 (and 2) learn the same whether or not layers above them exist."""
    torch.manual_seed(1)
    xs = [(torch.rand(16, 20), torch.rand(16, 20)) for _ in range(5)]
    short, tall = _net((12, 8), peer=peer), _net((12, 8, 6), peer=peer)
    for pos, neg in xs:
        short.train_step(pos, neg)
        tall.train_step(pos, neg)
    for a, b in zip(short.layers.parameters(), tall.layers[:2].parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(_net((12, 8, 6)).layers[0].linear.weight, tall.layers[0].linear.weight)


@pytest.mark.parametrize("loss,phase,peer,act", [
    ("pairwise", "both", 0.03, "relu_st"), ("threshold", "both", 0.0, "relu"),
    ("threshold", "pos", 0.03, "relu_st"), ("threshold", "neg", 0.03, "relu"),
])
def test_hand_gradient_equals_autograd(loss, phase, peer, act):
    """For sum-of-squares goodness train_step computes d loss/d h by hand, in one pass, on
    feature-major activities; a goodness that is the same function given as an opaque callable
    goes through autograd on batch-major ones. Both must give the same updates (fp32)."""
    torch.manual_seed(3)
    xs = [(torch.rand(16, 20), torch.rand(16, 20)) for _ in range(3)]

    def make(goodness):
        torch.manual_seed(4)
        rule = ff.FFRule(loss=loss, lr=0.05, dtype="float32", peer_weight=peer,
                         optimizer="adam", temperature=2.0)
        net = ff.FFNet(dense_stack(20, (12, 8), act, "fan_out"), rule)
        if goodness is not None:
            net.goodness, net.sign_of_sum_squares = goodness, None
            net.feature_major = False
        return net

    fast, slow = make(None), make(lambda h: (h * h).sum(1))
    assert fast.feature_major and fast.sign_of_sum_squares == 1.0
    for pos, neg in xs:
        sf, ss = fast.train_step(pos, neg, phase), slow.train_step(pos, neg, phase)
        for a, b in zip(sf, ss, strict=True):
            assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-5)
    for a, b in zip(fast.parameters(), slow.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_pair_dropout_shares_masks_and_keeps_the_mean():
    """A positive and its paired negative lose the same units; kept units are scaled by
    1/(1-p), so the mean is unchanged; the layout of the activities is kept."""
    g = torch.Generator().manual_seed(0)
    x = torch.ones(4000, 50).t().contiguous().t()  # feature-major, as FFNet passes it
    out = ff.pair_dropout(x.clone(), 2000, 0.25, g)
    assert torch.equal(out[:2000] == 0, out[2000:] == 0)
    assert out.unique().tolist() == pytest.approx([0.0, 4.0 / 3.0])
    assert abs((out == 0).float().mean().item() - 0.25) < 0.01
    assert abs(out.mean().item() - 1.0) < 0.02
    assert out.stride() == x.stride()
    a = ff.pair_dropout(torch.ones(6, 5), 0, 0.5, torch.Generator().manual_seed(1))
    assert not torch.equal(a[:3] == 0, a[3:] == 0)  # no pairs: independent masks


def test_input_dropout_holes_both_halves_of_a_hybrid():
    """Unsupervised input dropout: a hybrid negative has holes in both its images, as often as
    the positive does, so the holes do not tell the two apart."""
    cfg = ff.FFTraining(negatives="hybrid", image_shape=(1, 28, 28), input_dropout=0.5)
    x = torch.ones(400, 784)
    pos, neg = ff.positive_negative(x, torch.zeros(400, dtype=torch.long), torch.arange(200),
                                    cfg, torch.Generator().manual_seed(0))
    assert abs((pos == 0).float().mean().item() - 0.5) < 0.01
    assert abs((neg == 0).float().mean().item() - 0.5) < 0.01  # 0.25 if only one half drops


def test_feature_major_dense_equals_batch_major():
    """A Dense layer given a transposed view computes W x^T and keeps the layout; values and
    gradients equal the batch-major ones."""
    from mortal.arch.dense import Dense, feature_major_view

    torch.manual_seed(5)
    layer = Dense(7, 5, "relu", "fan_out")
    x = torch.randn(6, 7)
    xt = x.t().contiguous().t()
    assert feature_major_view(xt) and not feature_major_view(x)
    outs, grads = [], []
    for inp in (x, xt):
        inp = inp.clone().requires_grad_()
        layer.zero_grad()
        h = layer(inp)
        outs.append((h, feature_major_view(h)))
        (h * torch.arange(30.0).view(6, 5)).sum().backward()
        grads.append((inp.grad, layer.linear.weight.grad.clone(), layer.linear.bias.grad.clone()))
    assert outs[1][1] and not outs[0][1]
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_features_are_the_normalised_activities_the_next_layer_reads():
    """One pass gives each layer's activity and its normalised form; the softmax features are
    the normalised activities of layers[skip:] side by side, with a neutral label."""
    torch.manual_seed(4)
    net = _net((16, 12, 8), "float32")
    x = torch.rand(5, 20)
    passes = net.passes(x)
    for h, hn in passes:
        assert torch.equal(hn, ff.normalise(h))
        assert torch.allclose(hn.square().mean(1), torch.ones(5), atol=1e-5)
    acts = net.activities(embed_neutral(x, 10), feature_major=False)
    want = torch.cat([ff.normalise(h) for h in acts[1:]], 1)
    assert torch.equal(net.features(x, 10), want)
    assert torch.allclose(net.features(x, 10, batch_size=2), want, atol=1e-6)  # in batches


def test_bf16_matches_fp32_on_small_net():
    torch.manual_seed(2)
    x = torch.rand(64, 20)
    a, b = _net((32, 32), "float32"), _net((32, 32), "bfloat16")
    ga = [ff.sum_squares(h) for h in a.activities(x)]
    gb = [ff.sum_squares(h) for h in b.activities(x)]
    for u, v in zip(ga, gb, strict=True):  # goodness within 3 % (bf16 has an 8-bit mantissa)
        assert torch.allclose(u, v.float(), rtol=0.03, atol=0.05)
    la = [s["loss"].item() for s in a.train_step(x[:32], x[32:])]
    lb = [s["loss"].item() for s in b.train_step(x[:32], x[32:])]
    assert la == pytest.approx(lb, rel=0.03, abs=1e-3)


def test_nan_stops_with_layer_and_step(tmp_path):
    net = _net((12, 8), peer=0.0)
    with torch.no_grad():
        net.layers[1].linear.weight.fill_(float("nan"))
    x, y = torch.rand(64, 20), torch.randint(0, 10, (64,))
    cfg = ff.FFTraining(epochs=1, batch_size=16)
    run = Run(tmp_path / "r", "t", {}, quiet=True)
    with pytest.raises(NonFiniteError, match=r"step 0 in the FF network: layer 2 loss=nan"):
        ff.train(net, x, y, x, y, cfg, run, progress=False)


@needs_mnist
def test_one_epoch_learns_mnist(tmp_path):
    """One FF epoch of a 2x500 net (the recipe's rule, smaller) on all 60,000 MNIST training
    images: below 10 % test error in both classification modes, in about 10 s."""
    from mortal.data import load
    from mortal.loop import flat_float

    torch.manual_seed(0)
    ds = load("mnist")
    x, y = flat_float(ds.x_train, torch.device("cpu")), ds.y_train
    xt, yt = flat_float(ds.x_test, torch.device("cpu")), ds.y_test
    net = ff.FFNet(dense_stack(784, (500, 500), "relu_st", "fan_out"),
                   ff.FFRule(loss="pairwise", temperature=3.0, optimizer="adam", lr=1e-3,
                             weight_decay=3e-4, peer_weight=0.03))
    cfg = ff.FFTraining(epochs=1, batch_size=250, softmax_epochs=3)
    out = ff.train(net, x, y, xt, yt, cfg, Run(tmp_path / "r", "t", {}, quiet=True),
                   progress=False)
    assert out["test_error_goodness_pct"] < 10.0
    assert out["test_error_softmax_pct"] < 10.0


def test_hard_negatives_come_from_the_model(tmp_path):
    """After one epoch on a toy task, the hard-negative table names confusable labels, never the
    true one, and the run resumes with the same table."""
    torch.manual_seed(0)
    n = 512
    y = torch.randint(0, 4, (n,))
    x = torch.rand(n, 30) * 0.1
    x[torch.arange(n), 10 + y] += 1.0  # class k lights pixel 10 + k
    net = ff.FFNet(dense_stack(30, (16, 16), "relu_st", "fan_out"),
                   ff.FFRule(loss="pairwise", optimizer="adam", lr=1e-2))
    cfg = ff.FFTraining(epochs=2, batch_size=64, n_classes=4, hard_negatives_every=1,
                        hard_negatives_mix=1.0, softmax_epochs=1)
    ff.train(net, x, y, x, y, cfg, Run(tmp_path / "r", "t", {}, quiet=True), progress=False)
    from mortal.runs import checkpoint

    table = checkpoint.load(tmp_path / "r" / "checkpoint.safetensors")["state"]["y_neg_table"]
    assert table.shape == y.shape and not (table == y).any()
    assert int(table.max()) < 4


def test_averaged_weights_are_swapped_in_and_back():
    net = _net((6, 5), peer=0.0)
    live = [p.detach().clone() for p in net.layers.parameters()]
    avg = [torch.full_like(p, 0.5) for p in live]
    with ff.averaged_weights(net, avg):
        assert all(torch.equal(p, a) for p, a in zip(net.layers.parameters(), avg, strict=True))
    assert all(torch.equal(p, w) for p, w in zip(net.layers.parameters(), live, strict=True))
    with ff.averaged_weights(net, None):  # no average: the weights as trained
        assert all(torch.equal(p, w) for p, w in zip(net.layers.parameters(), live, strict=True))


def test_weight_average_is_a_moving_average_and_resumes_exactly(tmp_path):
    """With weight_average, evaluation uses an EMA of the weights (here: not the trained ones),
    the training weights are untouched by it, and a run stopped after epoch 1 and resumed ends
    with the uninterrupted run's metrics (the average is checkpointed)."""
    x, y = torch.rand(200, 20), torch.randint(0, 10, (200,))

    def run(out, epochs: int, average: float, resume: bool = False) -> tuple[dict, ff.FFNet]:
        torch.manual_seed(0)
        net = _net((12, 8), peer=0.0)
        cfg = ff.FFTraining(epochs=epochs, batch_size=20, softmax_epochs=1,
                            weight_average=average, schedule="constant")  # 1 epoch = the first
        res = ff.train(net, x, y, x, y, cfg, Run(out, "t", {}, quiet=True, resume=resume),
                       progress=False)
        return res, net

    plain, plain_net = run(tmp_path / "plain", 2, 0.0)
    whole, whole_net = run(tmp_path / "whole", 2, 0.9)
    for a, b in zip(plain_net.layers.parameters(), whole_net.layers.parameters(), strict=True):
        assert torch.equal(a, b)  # averaging never touches the weights being trained
    # ... but the classifier saw the averaged ones
    assert whole["test_error_goodness_pct"] != plain["test_error_goodness_pct"]
    run(tmp_path / "cut", 1, 0.9)
    resumed, _ = run(tmp_path / "cut", 2, 0.9, resume=True)
    keep = ("test_error_goodness_pct", "test_error_softmax_pct")
    assert {k: resumed[k] for k in keep} == {k: whole[k] for k in keep}


def test_online_softmax_step_is_cross_entropy_sgd():
    """One step of the online softmax equals SGD on the batch's mean cross-entropy, computed by
    autograd (torch's momentum buffer starts at the first gradient, so the first step is plain
    SGD); the logits it returns are those before the step."""
    torch.manual_seed(6)
    feats = [torch.randn(8, 5), torch.randn(8, 3).t().contiguous().t()]
    y = torch.randint(0, 4, (8,))
    head = ff.OnlineSoftmax([5, 3], 4, lr=0.5, weight_decay=0.0)
    with torch.no_grad():
        for w in head.weights:
            w.normal_()
    ws = [w.detach().clone().requires_grad_() for w in head.weights]
    b = head.bias.detach().clone().requires_grad_()
    logits = b + sum(f @ w.t() for f, w in zip(feats, ws, strict=True))
    torch.nn.functional.cross_entropy(logits, y).backward()
    got = head.step(feats, y)
    assert torch.allclose(got, logits.detach(), atol=1e-5)
    for w, ref in zip(head.weights, ws, strict=True):
        assert torch.allclose(w, ref - 0.5 * ref.grad, atol=1e-6)


def test_online_hard_negatives_never_true_and_resume_exactly(tmp_path):
    """hard_negatives_from=online: negatives are never the true label; a run stopped after one
    epoch and resumed ends with the same weights and online softmax as an uninterrupted one."""
    torch.manual_seed(0)
    n = 256
    y = torch.randint(0, 4, (n,))
    x = torch.rand(n, 30) * 0.1
    x[torch.arange(n), 10 + y] += 1.0
    cfg = ff.FFTraining(epochs=2, batch_size=32, n_classes=4, hard_negatives_from="online",
                        hard_negatives_mix=1.0, softmax_epochs=1, schedule="constant")

    def net():
        torch.manual_seed(1)
        return ff.FFNet(dense_stack(30, (16, 16), "relu_st", "fan_out"),
                        ff.FFRule(loss="pairwise", optimizer="adam", lr=1e-2, dtype="float32"))

    head = ff.OnlineSoftmax([16], 4)
    g = torch.Generator().manual_seed(0)
    labels = ff.online_wrong_labels(net(), head, x, y, cfg, g, 1.0)
    assert (labels != y).all()
    whole = net()
    ff.train(whole, x, y, x, y, cfg, Run(tmp_path / "a", "t", {}, quiet=True), progress=False)
    first = net()
    ff.train(first, x, y, x, y, ff.FFTraining(**{**cfg.__dict__, "epochs": 1}),
             Run(tmp_path / "b", "t", {}, quiet=True), progress=False)
    resumed = net()
    ff.train(resumed, x, y, x, y, cfg, Run(tmp_path / "b", "t", {}, resume=True, quiet=True),
             progress=False)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("loss,peer,act,fuse", [
    ("pairwise", 0.03, "relu_st", "eager"), ("threshold", 0.0, "relu", "eager"),
    ("pairwise", 0.03, "relu", "on"),
])
def test_shared_first_layer_equals_reference(loss, peer, act, fuse, monkeypatch):
    """Positives and negatives that differ only in their label features: the fused step that
    computes the first layer's image part once per pair (label_width) gives the reference
    step's losses, weights and Adam state (fp32, eager and compiled)."""
    from mortal.rules import ff_fused
    calls = []
    step = ff_fused.first_layer_step
    monkeypatch.setattr(ff_fused, "first_layer_step",
                        lambda *a, **k: calls.append(1) or step(*a, **k))
    torch.manual_seed(7)
    batches = []
    for _ in range(3):
        img = torch.rand(16, 20)
        img[:, :4] = 0
        y, y_neg = torch.randint(0, 4, (16,)), torch.randint(0, 4, (16,))
        pos, neg = img.clone(), img.clone()
        pos[torch.arange(16), y] = 1.0
        neg[torch.arange(16), y_neg] = 1.0
        batches.append((pos, neg))

    def make(f):
        torch.manual_seed(8)
        rule = ff.FFRule(loss=loss, lr=0.01, dtype="float32", peer_weight=peer, fuse=f,
                         optimizer="adam", weight_decay=1e-3, temperature=2.0)
        return ff.FFNet(dense_stack(20, (12, 8), act, "fan_out"), rule)

    ref, shared = make("off"), make(fuse)
    for pos, neg in batches:
        sr = ref.train_step(pos, neg, label_width=4)  # ignored by the reference step
        ss = shared.train_step(pos, neg, label_width=4)
        for a, b in zip(sr, ss, strict=True):
            assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-4)
            assert a["acc"].item() == b["acc"].item()
    assert len(calls) == 3  # the shared step ran (the reference never calls it)
    for a, b in zip(ref.parameters(), shared.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    for oa, ob in zip(ref.optimizers, shared.optimizers, strict=True):
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        for k in sa:
            assert torch.allclose(sa[k]["exp_avg"], sb[k]["exp_avg"], rtol=1e-3, atol=1e-6)
            assert torch.allclose(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"], rtol=1e-3,
                                  atol=1e-9)


@pytest.mark.parametrize("loss,phase,peer,act", [
    ("pairwise", "both", 0.03, "relu_st"), ("threshold", "both", 0.03, "relu"),
    ("threshold", "pos", 0.03, "relu_st"), ("threshold", "neg", 0.0, "relu"),
])
def test_fused_step_equals_reference(loss, phase, peer, act):
    """The fused Dense step (ff_fused.py, run uncompiled) gives the reference train_step's
    losses, weights and Adam state (fp32), so either path can resume the other's checkpoint."""
    torch.manual_seed(7)
    xs = [(torch.rand(16, 20), torch.rand(16, 20)) for _ in range(3)]

    def make(fuse):
        torch.manual_seed(8)
        rule = ff.FFRule(loss=loss, lr=0.01, dtype="float32", peer_weight=peer, fuse=fuse,
                         optimizer="adam", weight_decay=1e-3, temperature=2.0)
        return ff.FFNet(dense_stack(20, (12, 8), act, "fan_out"), rule)

    ref, fused = make("off"), make("eager")
    for pos, neg in xs:
        sr, sf = ref.train_step(pos, neg, phase), fused.train_step(pos, neg, phase)
        for a, b in zip(sr, sf, strict=True):
            assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-4)
            assert a["acc"].item() == b["acc"].item()
    for a, b in zip(ref.parameters(), fused.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    for oa, ob in zip(ref.optimizers, fused.optimizers, strict=True):
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k]["step"].item() == sb[k]["step"].item()
            assert torch.allclose(sa[k]["exp_avg"], sb[k]["exp_avg"], rtol=1e-3, atol=1e-6)
            assert torch.allclose(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"], rtol=1e-3,
                                  atol=1e-9)
