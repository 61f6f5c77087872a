"""The hand-written FF passes on recurrent locally connected maps (mortal.rules.ff_maps) and the
feature-major banded blocks they use, against autograd through the layers (the reference)."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from mortal.arch.local import LocallyConnected2d
from mortal.arch.recurrent import LocalRecurrentStack
from mortal.recipes import ff_cifar10 as fc
from mortal.recipes import ff_recurrent_mnist as rec
from mortal.rules import ff_maps


@pytest.mark.parametrize("c,h,w,k,rows,bw", [
    (6, 8, 8, 3, 1, 4),     # one-row blocks, columns divide evenly
    (3, 9, 7, 5, 2, 3),     # neither rows nor columns divide: padded blocks
    (2, 10, 9, 3, 3, 4),
    (3, 6, 6, 3, 6, 6),     # one block covers the map
])
def test_feature_major_blocks_equal_the_layer(c, h, w, k, rows, bw):
    """Blocks of rows x bw positions on a buffer of 3 inputs: each input's output equals the
    layer's, the weights survive blocks -> weights_of, and the weight gradient of all inputs
    in one matmul per block equals autograd's sum over the inputs."""
    torch.manual_seed(0)
    layer = LocallyConnected2d((c, h, w), 2, k, 1, k // 2, impl="band", band_width=bw)
    with torch.no_grad():
        layer.bias.zero_()
    geo = replace(layer.geometry(c), rows=rows)
    n, slots = 5, 3
    xs = [torch.randn(n, h * w * c) for _ in range(slots)]
    buf = geo.buffer(slots, n, torch.float32, torch.device("cpu"))
    for t, x in enumerate(xs):
        geo.write(buf, x.t().contiguous(), 0, t)
    blocks = geo.blocks(layer.weight.detach(), torch.float32)
    assert torch.equal(geo.weights_of(blocks), layer.weight.detach())
    # a block's real weights are exactly the field's: zeros elsewhere
    assert (blocks != 0).sum() == (layer.weight != 0).sum()
    for t, x in enumerate(xs):
        torch.testing.assert_close(geo.forward_fm(blocks, buf, t),
                                   layer.linear(x).reshape(n, -1).t(), atol=1e-5, rtol=1e-5)
    dz = torch.randn(h * w * 2, slots, n)
    loss = sum((layer.linear(x).reshape(n, -1).t() * dz[:, t]).sum() for t, x in enumerate(xs))
    (expected,) = torch.autograd.grad(loss, layer.weight)
    torch.testing.assert_close(geo.weight_grad_fm(buf, dz.flatten(1)), expected,
                               atol=1e-5, rtol=1e-5)


def _pair(depth: int, block: tuple[int, int]) -> tuple[LocalRecurrentStack, LocalRecurrentStack]:
    torch.manual_seed(depth)
    nets = [LocalRecurrentStack((3, 8, 8), [2] * depth, 3, impl="band", band_width=4,
                                label_scale=1.5) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    return nets[0], nets[1]


@pytest.mark.parametrize("depth,goodness,loss,block", [
    (2, "sumsq", "pairwise", (1, 4)),
    (3, "neg_sumsq", "pairwise", (3, 3)),
    (1, "sumsq", "threshold", (2, 8)),
    (2, "neg_sumsq", "threshold", (4, 5)),
])
def test_fast_gradients_equal_autograd(depth, goodness, loss, block):
    """Losses and every parameter's gradient of one step (4 iterations), fp32: the same as
    autograd through the layers, for 1-3 maps, both goodness signs, both losses, and blocks
    that do and do not divide the map."""
    ref, fast = _pair(depth, block)
    cfg = SimpleNamespace(iterations=4, dtype="float32", loss=loss, temperature=3.0,
                          threshold=1.0, block=block)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 192, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    y_neg = (y + 3) % 10
    expected = rec.layer_losses(ref, x, y, y_neg, cfg, goodness)
    sum(expected).backward()
    got = ff_maps.layer_gradients(fast, x, y, y_neg, cfg, goodness)
    torch.testing.assert_close(torch.stack(got), torch.stack(expected).detach())
    for (name, a), (_, b) in zip(ref.named_parameters(), fast.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=2e-6, rtol=1e-4, msg=name)


def test_fast_goodness_and_neutral_features_equal_the_reference():
    """Every label's goodness at every iteration (all labels in one run, the image part once)
    and the neutral-label features the one-pass softmax reads: as the reference computes."""
    ref, fast = _pair(3, (2, 3))
    cfg = replace(fc.Config(), image_size=8, kernel=3, channels=2, iterations=4, score_from=2,
                  score_to=3, dtype="float32", eval_batch_size=4, block=(2, 3))
    x = torch.randn(6, 192, generator=torch.Generator().manual_seed(2))
    expected = rec.goodness_by_iteration(ref, x, cfg, 4, 4)
    torch.testing.assert_close(ff_maps.goodness_by_iteration(fast, x, cfg, 4), expected,
                               atol=1e-4, rtol=1e-5)
    assert fc.fast(fast, cfg) and not fc.fast(fast, replace(cfg, impl="reference"))
    torch.testing.assert_close(fc.neutral_features(fast, x, cfg).float(),
                               fc.neutral_features(fast, x, replace(cfg, impl="reference"))
                               .float())
    scores = fc.every_label_scores(fast, x, cfg, "min_ssq")
    torch.testing.assert_close(scores, fc.every_label_scores(
        fast, x, replace(cfg, impl="reference"), "min_ssq"), atol=1e-4, rtol=1e-5)


def test_fast_path_applies_to_relu_maps_only():
    net = LocalRecurrentStack((3, 8, 8), [2, 2], 3)
    assert ff_maps.supports(net)
    assert not ff_maps.supports(LocalRecurrentStack((3, 8, 8), [2, 2], 3, act="relu_st"))
    assert not ff_maps.supports(rec.RecurrentStack(10, [4, 4]))
    cfg = SimpleNamespace(iterations=2, dtype="float32", loss="pairwise", temperature=1.0)
    x, y = torch.randn(2, 192), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="sum-of-squares"):
        ff_maps.layer_gradients(net, x, y, 1 - y, cfg, "sum")
