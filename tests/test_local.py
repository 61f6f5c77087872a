"""Locally connected layers and hybrid-image negatives: hand-checkable cases, and short runs of
the unsupervised FF recipes that must learn."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mortal.arch.local import LocallyConnected2d, local_stack, out_size
from mortal.data.negatives import blur_mask, hybrid_images, other_indices
from tests.conftest import needs_mnist


def _receptive_mask(c: int, h: int, w: int, k: int, s: int, o: int, pad: int = 0
                    ) -> torch.Tensor:
    """(H*W*C, oh*ow*O): 1 where an input element (channels last) lies in an output unit's
    receptive field, built with plain loops."""
    oh, ow = out_size(h, k, s, pad), out_size(w, k, s, pad)
    mask = torch.zeros(h, w, c, oh, ow, o)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s - pad, j * s - pad
            mask[max(r0, 0) : r0 + k, max(c0, 0) : c0 + k, :, i, j, :] = 1
    return mask.reshape(h * w * c, oh * ow * o)


@pytest.mark.parametrize("shape,k,s,pad", [((1, 7, 7), 3, 2, 0), ((2, 6, 5), 2, 1, 0),
                                           ((3, 4, 4), 4, 1, 0), ((2, 5, 5), 3, 2, 1)])
def test_locally_connected_equals_masked_dense(shape, k, s, pad):
    torch.manual_seed(0)
    layer = LocallyConnected2d(shape, 3, k, s, pad, act="relu")
    w, b = layer.dense_equivalent()
    mask = _receptive_mask(*shape, k, s, 3, pad)
    assert w.shape == mask.shape
    assert (w[mask == 0] == 0).all()          # nothing outside the receptive fields
    assert (w[mask == 1] != 0).all()          # and a weight of its own for every element inside
    x = torch.randn(4, shape[1], shape[2], shape[0])  # channels last
    torch.testing.assert_close(layer(x).reshape(4, -1), torch.relu(x.reshape(4, -1) @ w + b))
    torch.testing.assert_close(layer(x.reshape(4, -1)), layer(x))  # flat input is the same
    # backprop reaches the input and the weights through the gather
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


@pytest.mark.parametrize("shape,k,s,pad,bw", [((1, 7, 7), 3, 2, 0, 2), ((2, 6, 5), 2, 1, 0, 8),
                                              ((3, 9, 9), 5, 1, 2, 3), ((6, 12, 12), 5, 1, 2, 12),
                                              ((2, 8, 8), 4, 2, 1, 3)])
def test_band_implementation_equals_gather(shape, k, s, pad, bw):
    """impl='band' (dense blocks on overlapping windows, zeros outside the fields) gives the
    gather implementation's output and gradients (input, weight, bias), also for a channel
    subset through `partial`; blocks that overhang the map's edge are cut off."""
    torch.manual_seed(1)
    gather = LocallyConnected2d(shape, 3, k, s, pad, act="relu")
    band = LocallyConnected2d(shape, 3, k, s, pad, act="relu", impl="band", band_width=bw)
    band.load_state_dict(gather.state_dict())
    x = torch.randn(5, shape[1], shape[2], shape[0])
    outs, grads = [], []
    for layer in (gather, band):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y)
        grads.append((xi.grad, layer.weight.grad, layer.bias.grad))
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if shape[0] > 1:
        part = x[..., :1].contiguous()
        torch.testing.assert_close(gather.partial(part, 0, 1), band.partial(part, 0, 1))


def test_local_positions_do_not_share_weights():
    layer = LocallyConnected2d((1, 4, 4), 1, 2, 2, act="relu")
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        layer.weight[0] = 1.0  # only the top-left position has weights
    out = layer(torch.ones(1, 16))
    assert out[0, :, :, 0].tolist() == [[4.0, 0.0], [0.0, 0.0]]


def test_paper_local_net_shapes():
    net = local_stack((1, 28, 28), [(128, 10, 6), (220, 2, 1), (512, 2, 1)])
    assert [m.out_shape for m in net] == [(4, 4, 128), (3, 3, 220), (2, 2, 512)]
    x = torch.rand(3, 784)
    for m in net:
        x = m(x)
    assert x.shape == (3, 2, 2, 512)
    with pytest.raises(ValueError, match="does not fit"):
        LocallyConnected2d((1, 4, 4), 2, 5, 1)


def test_hybrid_mask_has_large_regions_with_mean_near_half():
    g = torch.Generator().manual_seed(0)
    m = blur_mask(4000, (28, 28), 6, g)
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert m.mean().item() == pytest.approx(0.5, abs=0.02)
    # large regions: neighbours agree far more often than for random bits (0.5)
    agree = (m[:, :, 1:] == m[:, :, :-1]).float().mean().item()
    assert agree > 0.85
    raw = blur_mask(4000, (28, 28), 0, g)
    assert (raw[:, :, 1:] == raw[:, :, :-1]).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_hybrid_images_mix_two_images_through_the_mask():
    g = torch.Generator().manual_seed(1)
    a, b = torch.full((5, 16), 2.0), torch.full((5, 16), -3.0)
    h = hybrid_images(a, b, (1, 4, 4), blur_steps=2, g=g)
    assert set(h.unique().tolist()) <= {2.0, -3.0}
    idx = torch.arange(1000)
    other = other_indices(idx, 1000, g)
    assert (other != idx).all() and other.max() < 1000


@needs_mnist
@pytest.mark.parametrize("recipe,sets,bound,ff_acc", [
    # the threshold loss starts slowly (layer 1 tells images from hybrids 52 % of the time after
    # 20 steps, 69 % after 80): 2 epochs of 10,000 images; measured 10.34 % and 0.686
    ("ff-unsupervised-mnist", ["epochs=2", "train_limit=10000", "widths=500,500,500,500"],
     12.0, 0.6),
    # pairwise loss (its record's): pairs told apart 55.3 % of the time over the first epoch
    ("ff-local-mnist", ["epochs=1", "train_limit=5000"], 12.0, 0.52),
])
def test_unsupervised_recipes_learn(tmp_path, recipe, sets, bound, ff_acc):
    """FF with no labels: layer 1 learns to tell real images from hybrids, and a softmax on the
    features beats 12 %. (A random net's features give about 10 % on 10,000 images: that
    bound checks the pipeline; telling images from hybrids is the learning.)"""
    from mortal.cli import main

    out = tmp_path / "r"
    args = ["run", recipe, "--quiet", "--out", str(out)]
    for s in [*sets, "softmax_epochs=10", "random_baseline=false"]:
        args += ["--set", s]
    assert main(args) == 0
    r = json.loads((out / "results.json").read_text())
    assert "test_error_goodness_pct" not in r  # no labels in the input: no mode (a)
    assert r["test_error_pct"] < bound
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["ff_acc_layer1"] > ff_acc


def test_separate_phases_use_only_their_half_of_the_loss():
    """A positive-only step moves goodness of positive data up and leaves the network's
    response to a separate negative batch out of the update entirely."""
    from mortal.arch.dense import dense_stack
    from mortal.rules import ff

    torch.manual_seed(0)
    rule = ff.FFRule(loss="threshold", threshold=0.5, optimizer="sgd", lr=0.05, dtype="float32")
    net = ff.FFNet(dense_stack(20, (16, 16)), rule)
    x_pos, x_neg = torch.rand(32, 20), torch.rand(32, 20) * 3
    g0 = [net.goodness(h) for h in net.activities(x_pos)]
    before = [p.detach().clone() for p in net.parameters()]
    net.train_step(x_pos, torch.full_like(x_neg, float("nan")), phase="pos")  # neg unused
    assert all(torch.isfinite(p).all() for p in net.parameters())
    g1 = [net.goodness(h) for h in net.activities(x_pos)]
    assert all(b.mean() > a.mean() for a, b in zip(g0, g1, strict=True))
    net.train_step(torch.full_like(x_pos, float("nan")), x_neg, phase="neg")  # pos unused
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    pairwise = ff.FFNet(dense_stack(20, (16,)), ff.FFRule(loss="pairwise"))
    with pytest.raises(ValueError, match="threshold"):
        pairwise.train_step(x_pos, x_neg, phase="pos")


@needs_mnist
def test_sleep_study_writes_its_grid(tmp_path):
    from mortal.cli import main

    out = tmp_path / "s"
    assert main(["run", "ff-sleep-mnist", "--quiet", "--out", str(out), "--set", "epochs=2",
                 "--set", "widths=200,200", "--set", "train_limit=4000", "--set",
                 "k_values=0,5,-1", "--set", "negative_sources=uniform,model"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert set(r["cells"]) == {f"{s}-k{k}" for s in ("uniform", "model")
                               for k in ("0", "5", "epoch")}
    assert r["cells"]["uniform-k0"]["softmax_pct"] < 20  # it learned
    assert (out / "table.md").exists() and (out / "error_vs_k.png").exists()
    dead = r["cells"]["uniform-k0"]["dead_units"]
    assert len(dead) == 2 and all(0 <= d <= 1 for d in dead)


@needs_mnist
def test_sleep_cells_trained_by_another_run_are_taken_as_they_are(tmp_path):
    """Two processes can share the grid: a cell trained by a run that differs only in
    k_values / negative_sources, copied into stages/, is not trained again on --resume."""
    from mortal.cli import main

    small = ["--quiet", "--set", "epochs=1", "--set", "widths=100,100", "--set",
             "train_limit=2000"]
    part, whole = tmp_path / "part", tmp_path / "whole"
    assert main(["run", "ff-sleep-mnist", *small, "--out", str(part), "--set", "k_values=5",
                 "--set", "negative_sources=model"]) == 0
    shutil.copytree(part / "stages" / "model-k5", whole / "stages" / "model-k5")
    (whole / "stages" / "model-k5" / "stage.json").write_text(json.dumps(
        {**json.loads((part / "stages" / "model-k5" / "stage.json").read_text()),
         "test_error_goodness_pct": 12.5}))  # marked, to see it is taken, not retrained
    assert main(["run", "ff-sleep-mnist", *small, "--out", str(whole), "--resume", "--set",
                 "k_values=0,5", "--set", "negative_sources=model"]) == 0
    cells = json.loads((whole / "results.json").read_text())["cells"]
    assert cells["model-k5"]["goodness_pct"] == 12.5 and "model-k0" in cells


def test_dead_units_counts_units_silent_on_every_image():
    from mortal.arch.dense import dense_stack
    from mortal.recipes.ff_sleep_mnist import dead_units
    from mortal.rules import ff

    net = ff.FFNet(dense_stack(20, (4, 3)), ff.FFRule(dtype="float32"))
    with torch.no_grad():
        for layer, bias in zip(net.layers, ([-1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]),
                               strict=True):
            layer.linear.weight.zero_()
            layer.linear.bias.copy_(torch.tensor(bias))
    x, y = torch.rand(8, 20), torch.randint(0, 10, (8,))
    assert dead_units(net, x, y) == [0.5, round(1 / 3, 4)]


def test_frozen_reuses_band_blocks_with_the_same_results_and_rebuilds_after_a_step(
        monkeypatch):
    from contextlib import nullcontext

    from mortal.arch.local import BandGeometry, frozen
    from mortal.recipes import ff_cifar10 as fc
    from mortal.recipes import ff_recurrent_mnist as rec

    torch.manual_seed(0)
    cfg = fc.Config(image_size=12, kernel=5, dtype="float32")
    net = fc.ff_net(cfg, 2)
    x, y = torch.randn(6, 3 * 12 * 12), torch.tensor([0, 1, 2, 3, 4, 5])
    built = []
    blocks = BandGeometry.blocks

    def counted(geo, weight, dtype):  # count block builds
        built.append(geo.c)
        return blocks(geo, weight, dtype)

    monkeypatch.setattr(BandGeometry, "blocks", counted)

    def step(use: bool):
        net.zero_grad()
        built.clear()
        with frozen(net) if use else nullcontext():
            losses = rec.layer_losses(net, x, y, (y + 1) % 10, cfg, "neg_sumsq")
        sum(losses).backward()
        return [v.detach() for v in losses], [p.grad.clone() for p in net.parameters()]

    plain, frozen_run = step(False), step(True)
    n_frozen = len(built)
    step(False)
    n_plain = len(built)
    for a, b in zip(plain[0] + plain[1], frozen_run[0] + frozen_run[1], strict=True):
        assert torch.equal(a, b)  # the same blocks: bit for bit
    # frozen: layer 1's image part, its top-down part and layer 2, each built once; plain:
    # those two at each of the 10 iterations, plus the image part and layer 2 of the first
    # (no-grad) bottom-up pass, plus the image part again with grad
    assert n_frozen == 3 and n_plain == 2 * cfg.iterations + 3
    assert all(layer.local._blocks is None for layer in net.layers)  # nothing kept after
    with frozen(net):
        before = fc.every_label_scores(net, x, cfg, "min_ssq")
        with torch.no_grad():  # an in-place change of the weights bumps their version
            net.layers[1].local.weight.mul_(2.0)
        after = fc.every_label_scores(net, x, cfg, "min_ssq")
    torch.testing.assert_close(after, fc.every_label_scores(net, x, cfg, "min_ssq"))
    assert not torch.allclose(before, after)
