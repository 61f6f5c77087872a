"""GLOM: the update rule by hand, attention, gradient locality, the part-whole data, ARI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mortal.arch.glom import (
    Glom,
    GlomSpec,
    attention_weights,
    consensus,
    locality_bias,
    update,
)
from mortal.data import parts
from mortal.rules import glom as rule


def test_update_hand_computed_two_columns_two_levels():
    # e: (B=1, L=2, N=2, D=2). Level 0: col0 = x, col1 = y; level 1: both columns = x.
    x, y = [1.0, 0.0], [0.0, 1.0]
    e = torch.tensor([[[x, y], [x, x]]])
    bu = torch.tensor([[[y, y], [y, x]]])
    td = torch.tensor([[[x, x]]])  # level 0 only: the top level has no top-down term
    bias = locality_bias((1, 2), (0.0, 0.0))
    att = consensus(e, 10.0, bias)
    # With self excluded, each of 2 columns attends only to the other one: a swap.
    assert att.tolist() == [[[y, x], [x, x]]]
    out = update(e, bu, td, att, (1.0, 1.0, 1.0, 1.0))
    # level 0, col 0: (x + y + x + y) / 4 = (1/2, 1/2) -> unit (1/sqrt2, 1/sqrt2)
    # level 0, col 1: (y + y + x + x) / 4 -> the same
    # level 1, col 0: (x + y + x) / 3 = (2/3, 1/3) -> (2, 1) / sqrt5
    # level 1, col 1: (x + x + x) / 3 = x
    r, s = 1 / math.sqrt(2), 1 / math.sqrt(5)
    expected = [[[[r, r], [r, r]], [[2 * s, s], [1.0, 0.0]]]]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)
    # weights (prev, bu, td, att) = (2, 0, 0, 1): level 1, col 0 = (2x + x) / 3 = x
    out = update(e, bu, td, att, (2.0, 0.0, 0.0, 1.0))
    assert torch.allclose(out[0, 1, 0], torch.tensor(x))
    assert torch.allclose(out[0, 0, 0], torch.tensor([2.0, 1.0]) / math.sqrt(5))


def test_attention_sums_to_one_and_respects_locality():
    g = torch.Generator().manual_seed(0)
    grid = (3, 4)
    bias = locality_bias(grid, (1.0, 1.5, 0.0))
    e = torch.nn.functional.normalize(torch.randn(2, 3, 12, 5, generator=g), dim=-1)
    w = attention_weights(e, 5.0, bias)  # (B, L, N, N)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 12), atol=1e-6)
    assert (torch.diagonal(w, dim1=-2, dim2=-1) == 0).all()  # other columns only
    ys, xs = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    xy = torch.stack([xs.flatten(), ys.flatten()], 1).float()
    dist = torch.cdist(xy, xy)
    off = ~torch.eye(12, dtype=torch.bool)
    assert (w[:, 0][:, dist > 1.0] == 0).all() and (w[:, 0][:, (dist <= 1.0) & off] > 0).all()
    assert (w[:, 1][:, dist > 1.5] == 0).all() and (w[:, 1][:, (dist <= 1.5) & off] > 0).all()
    assert (w[:, 2][:, off] > 0).all()  # radius 0: every other column
    # Weights follow similarity: a column attends most to its most similar allowed neighbour.
    sim = e @ e.transpose(-1, -2)
    sim = sim.masked_fill(~off, -2)[:, 2]
    assert torch.equal(w[:, 2].argmax(-1), sim.argmax(-1))


def small_glom(levels: int = 3) -> Glom:
    torch.manual_seed(0)
    return Glom(GlomSpec(image=(1, 8, 8), patch=4, n_levels=levels, dim=8, hidden=16,
                         radius=(0.0,) * levels))


def small_state(n_images: int) -> tuple[Glom, torch.Tensor, torch.Tensor, torch.Tensor]:
    """small_glom(3), `n_images` random 8x8 images, their columns and initial state."""
    model = small_glom(3)
    x = torch.rand(n_images, 1, 8, 8)
    cols = model.columns(x)
    return model, x, cols, model.init_state(cols)


def untouched(p: torch.Tensor) -> bool:
    """No gradient reached this parameter (none at all, or exactly zero)."""
    return p.grad is None or bool((p.grad == 0).all())


def test_local_mode_gradients_stay_in_their_net():
    model = small_glom(3)
    x = torch.rand(4, 1, 8, 8)
    cols = model.columns(x)
    e = model.init_state(cols)
    losses, *_ = rule.local_losses(model, cols, e, "float32")
    # Level 2's bottom-up loss reaches the bottom-up net of level 2 (stacked index 1) only.
    losses["bu"][2].backward(retain_graph=True)
    grads = model.bottom.w1.grad
    assert grads[1].abs().sum() > 0 and grads[0].abs().sum() == 0
    assert all(untouched(p) for p in [*model.bottom0.parameters(), *model.top.parameters()])
    model.zero_grad(set_to_none=True)
    # Level 0's top-down loss reaches the top-down net of level 0 only.
    losses["td"][0].backward(retain_graph=True)
    assert model.top.w1.grad[0].abs().sum() > 0 and model.top.w1.grad[1].abs().sum() == 0
    assert all(untouched(p) for p in [*model.bottom0.parameters(), *model.bottom.parameters()])
    model.zero_grad(set_to_none=True)
    losses["bu"][0].backward()
    assert model.bottom0.w1.grad.abs().sum() > 0
    assert all(untouched(p) for p in [*model.bottom.parameters(), *model.top.parameters()])


def test_two_views_learn_from_each_others_consensus():
    model = small_glom(3)
    x = torch.rand(4, 1, 8, 8)
    # Two identical views: each view's target is its own consensus, so the loss is one view's.
    cols = model.columns(torch.cat([x, x]))
    e = model.init_state(cols)
    two, *_ = rule.local_losses(model, cols, e, "float32", views=2)
    one, *_ = rule.local_losses(model, cols[:4], e[:4], "float32")
    for k in ("bu", "td"):
        torch.testing.assert_close(two[k], one[k])
    # Different views: view 1's predictions are scored against view 2's consensus and back.
    x2 = rule.shifted(x, 2, torch.Generator().manual_seed(1))
    assert x2.shape == x.shape and not torch.equal(x2, x)
    cols = model.columns(torch.cat([x, x2]))
    e = model.init_state(cols)
    losses, bu, td, att = rule.local_losses(model, cols, e, "float32", views=2)
    want = (rule.info_nce(bu[:4], att[4:], 0.1) + rule.info_nce(bu[4:], att[:4], 0.1)) / 2
    torch.testing.assert_close(losses["bu"], want)
    want = (rule.info_nce(td[:4], att[4:, :-1], 0.1)
            + rule.info_nce(td[4:], att[:4, :-1], 0.1)) / 2
    torch.testing.assert_close(losses["td"], want)
    # A one-pixel image moved by at most s pixels stays within s of where it was.
    dot = torch.zeros(16, 1, 9, 9)
    dot[:, 0, 4, 4] = 1
    moved = rule.shifted(dot, 2, torch.Generator().manual_seed(0))
    ys, xs = torch.nonzero(moved[:, 0], as_tuple=True)[1:]
    assert len(ys) == 16 and (ys - 4).abs().max() <= 2 and (xs - 4).abs().max() <= 2
    assert rule.shifted(dot, 0, None).equal(dot)


def test_column_rolled_views_match_columns_by_content():
    """shift_columns: the second view is rolled by whole columns; column n's positive is the
    other view's consensus at the column that holds n's content (by hand on a 2x3 grid)."""
    perm = rule.column_permutation((2, 3), (1, -1))
    # (r, c) -> ((r + 1) % 2, (c - 1) % 3): 0=(0,0)->(1,2)=5, 1->(1,0)=3, 2->(1,1)=4, 3->2, ...
    assert perm.tolist() == [5, 3, 4, 2, 0, 1]
    x = torch.rand(3, 1, 8, 12)
    rolled = rule.roll_columns(x, (1, -1), 4)
    torch.testing.assert_close(rule.patches(rolled, 4)[:, perm], rule.patches(x, 4))
    model = Glom(GlomSpec(image=(1, 8, 12), patch=4, n_levels=2, dim=8, hidden=16,
                          radius=(0.0, 0.0)))
    model.tau, model.far_negatives, model.image_negatives = 0.1, True, False
    model.far_radius = (0.0, 0.0)
    cols = model.columns(torch.cat([x, rolled]))
    e = model.init_state(cols)
    losses, bu, td, att = rule.local_losses(model, cols, e, "float32", views=2, align=perm)
    far, inv = rule.far_mask(model), torch.argsort(perm)
    assert inv[perm].tolist() == list(range(6))
    want = (rule.info_nce(bu[:3], att[3:][:, :, perm], 0.1, far, other_images=False)
            + rule.info_nce(bu[3:], att[:3][:, :, inv], 0.1, far, other_images=False)) / 2
    torch.testing.assert_close(losses["bu"], want)
    unaligned, *_ = rule.local_losses(model, cols, e, "float32", views=2)
    assert not torch.allclose(unaligned["bu"], losses["bu"])
    with pytest.raises(ValueError, match="views=2"):
        rule.local_losses(model, cols, e, "float32", align=perm)
    # the training step draws a roll, and the losses it reports are finite
    r = rule.GlomRule(iterations=2, views=2, shift_columns=1, far_negatives=True,
                      image_negatives=False, dtype="float32")
    rule.attach(model, r)
    stats = rule.local_step(model, x, r, torch.optim.Adam(model.parameters(), 1e-3),
                            g=torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for v in stats.values())


def test_info_nce_hand_computed():
    # Two images, one level, one column; predictions equal their targets (unit vectors x, y).
    t = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])  # (B=2, L=1, N=1, D=2)
    loss = rule.info_nce(t, t, tau=1.0)
    # logits [[1, 0], [0, 1]]: -log(e / (e + 1)) for each image
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # data parallel: this process holds image 1 of the global pair: the same per-image loss
    assert rule.info_nce(t[1:], t, 1.0, offset=1).item() == pytest.approx(loss.item())
    # weights: all on image 0's column, whose prediction is now wrong (y for target x):
    # logits [0, 1], the positive is 0 -> log(1 + e)
    wrong = torch.tensor([[[[0.0, 1.0]]], [[[0.0, 1.0]]]])
    w = torch.tensor([[1.0], [0.0]])
    assert rule.info_nce(wrong, t, 1.0, weight=w).item() == pytest.approx(math.log(1 + math.e))


def test_ink_weights_hand_computed():
    x = torch.zeros(2, 1, 4, 8)  # two images of 1x2 columns of 4x4 pixels
    x[0, 0, 1, 1] = 1.0  # image 0: ink in its left column only
    x[1, 0, 0, 5] = 0.5  # image 1: ink in its right column only
    x[1, 0, 3, 0] = 0.2  # and in its left
    w = rule.ink_weights(x, 4)
    assert w.tolist() == [[pytest.approx(1 / 3), 0.0], [pytest.approx(1 / 3)] * 2]
    assert torch.equal(rule.ink_weights(torch.zeros(1, 1, 4, 8), 4), torch.full((1, 2), 0.5))


def test_parts_ids_agree_with_pixels():
    b = parts.make_parts(16, seed=3, ambiguity=0.5)
    fg = b.images[:, 0] > 0
    assert torch.equal(fg, b.part_ids > 0) and torch.equal(fg, b.object_ids > 0)
    assert torch.equal(fg, b.part_types >= 0)
    for i in range(16):
        for pid in b.part_ids[i].unique().tolist():
            if pid == 0:
                continue
            mask = b.part_ids[i] == pid
            k, p = divmod(pid - 1, 3)
            assert (b.object_ids[i][mask] == k + 1).all()  # a part lies in one object
            shape = parts.TEMPLATES[int(b.classes[i, k])][p][2]
            assert (b.part_types[i][mask] == shape).all()
            a, bb = parts.part_axes(shape, 0.5)
            # the area is pi a b up to the +-10 % size jitter and pixelisation
            assert 0.6 * math.pi * a * bb < mask.sum() < 1.45 * math.pi * a * bb
    # Every image shows all 6 parts; same seed, same images; a new seed, new images.
    assert all(len(b.part_ids[i].unique()) == 7 for i in range(16))
    assert torch.equal(parts.make_parts(16, seed=3, ambiguity=0.5).images, b.images)
    assert not torch.equal(parts.make_parts(16, seed=4, ambiguity=0.5).images, b.images)
    assert parts.max_overlap_free_scale() > 1 + parts.SCALE_JITTER  # parts never touch


def test_touching_layout_ids_and_contact():
    """layout="touching": ids agree with pixels, every part is visible, parts of one object
    stay apart, and the two objects come as close as parts of one object do (unlike
    "strips"): connected regions of foreground cannot say which object a part belongs to."""
    b = parts.make_parts(32, seed=5, ambiguity=0.5, layout="touching")
    fg = b.images[:, 0] > 0
    assert torch.equal(fg, b.part_ids > 0) and torch.equal(fg, b.object_ids > 0)
    assert all(len(b.part_ids[i].unique()) == 7 for i in range(32))
    for pid in range(1, 7):  # a part lies in one object (the later object hides the earlier)
        assert (b.object_ids[b.part_ids == pid] == (pid - 1) // 3 + 1).all()

    def gap(batch: parts.PartsBatch) -> torch.Tensor:
        """Per image: the smallest Chebyshev distance (in pixels) between the two objects."""
        out = []
        for img in batch.object_ids:
            a, c = (torch.nonzero(img == k).float() for k in (1, 2))
            out.append(torch.cdist(a, c, p=float("inf")).min())
        return torch.stack(out)

    # the objects come as close as the parts of one object (within two 4-pixel columns);
    # in "strips" at least 9 pixels of background lie between them
    assert (gap(b) <= 8).all() and gap(b).min() == 1
    assert (gap(parts.make_parts(32, seed=5, ambiguity=0.5)) >= 9).all()
    with pytest.raises(ValueError, match="layout"):
        parts.make_parts(1, 0, layout="heap")


def test_column_ids_hand_computed():
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, :2, :2] = 3  # top-left patch all part 3
    ids[0, 0, 2] = 5  # top-right patch: 1 of 4 pixels -> 25 %: kept at min_fg 0.25
    ids[0, 3, 3] = 2
    ids[0, 2, 2] = 1  # bottom-right: a tie between 1 and 2 -> the smaller id
    assert parts.column_ids(ids, 2).tolist() == [[3, 5, 0, 1]]
    assert parts.column_ids(ids, 2, min_fg=0.5).tolist() == [[3, 0, 0, 1]]


def test_ari_and_clustering_hand_computed():
    a = np.array([0, 0, 1, 1])
    b = np.array([0, 0, 1, 2])
    # pairs: together in both 1; rows 2; cols 1; of 6: expected 1/3; max 1.5 -> 4/7
    assert rule.adjusted_rand_index(a, b) == pytest.approx(4 / 7)
    assert rule.adjusted_rand_index(a, np.array([5, 5, 2, 2])) == 1.0  # names do not matter
    assert rule.adjusted_rand_index(np.array([0, 1, 0, 1]), a) == pytest.approx(-0.5)
    emb = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    labels = rule.cluster(emb, threshold=0.9)
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]
    assert len(set(rule.cluster(emb, threshold=-1.0).tolist())) == 1


def test_info_nce_far_negatives_hand_computed():
    # One image, one level, two columns far apart: column 0 must pick its own target (x) over
    # column 1's (y). Without far negatives a batch of one image has nothing to contrast.
    x, y = [1.0, 0.0], [0.0, 1.0]
    t = torch.tensor([[[x, y]]])  # (B=1, L=1, N=2, D=2)
    far = torch.tensor([[[False, True], [True, False]]])
    assert rule.info_nce(t, t, 1.0).item() == pytest.approx(0.0)
    assert rule.info_nce(t, t, 1.0, far).item() == pytest.approx(math.log(1 + math.exp(-1)))
    # the same image's far columns alone (no other images): the same numbers here
    assert rule.info_nce(t, t, 1.0, far, other_images=False).item() == pytest.approx(
        math.log(1 + math.exp(-1)))
    two = torch.cat([t, t.flip(2)])  # a second image with the columns swapped
    # with other images, column 0 of image 0 also meets image 1's column 0 (y): two negatives
    assert rule.info_nce(two, two, 1.0, far)[0].item() == pytest.approx(
        math.log(1 + 2 * math.exp(-1)))
    assert rule.info_nce(two, two, 1.0, far, other_images=False)[0].item() == pytest.approx(
        math.log(1 + math.exp(-1)))
    with pytest.raises(ValueError, match="far negatives"):
        rule.info_nce(t, t, 1.0, other_images=False)


def test_local_learning_forms_object_islands():
    """Easy setting (ambiguity 0): before learning, the top level of a small GLOM is one blur
    (object ARI at cosine 0.9 below 0.5); after 8 local steps of 8 images its islands match the
    two objects (ARI > 0.8) and the InfoNCE loss has fallen. About 8 s on one loaded core
    (one thread: small matmuls gain nothing from a second one on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        learn_islands()
    finally:
        torch.set_num_threads(threads)


def learn_islands() -> None:
    """The body of test_local_learning_forms_object_islands."""
    torch.manual_seed(0)
    spec = GlomSpec(image=(1, 48, 64), dim=32, hidden=32, beta=3.0, weights=(1, 0.3, 0.3, 3),
                    radius=(1.0, 1.5, 2.5, 3.5))
    model = Glom(spec)
    model.tau, model.far_negatives = 0.1, True
    test = parts.make_parts(8, seed=7, ambiguity=0.0)
    ids = parts.column_ids(test.object_ids, 4)

    def top_ari() -> float:
        e = rule.states(model, test.images, 20, "bfloat16")
        return float(rule.level_ari(e[:, 3:], ids, 0.9)[0])

    assert top_ari() < 0.5
    r = rule.GlomRule(iterations=4, lr=3e-3, tau=0.1, far_negatives=True)
    opt = torch.optim.Adam(model.parameters(), lr=r.lr)
    losses = []
    for step in range(8):
        b = parts.make_parts(8, seed=100 + step, ambiguity=0.0)
        stats = rule.local_step(model, b.images, r, opt)
        losses.append(sum(v for k, v in stats.items() if k.startswith("loss_bu")))
    assert np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2])
    assert top_ari() > 0.8


def test_top_beta_sharpens_the_top_level_only():
    """GlomSpec.top_beta: the top level's attention uses its own inverse temperature, the
    other levels keep beta; top_beta 0 (or equal to beta) is the single-beta attention."""
    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(2, 2, 5, 4, generator=g), dim=-1)
    spec = GlomSpec(image=(1, 4, 20), patch=4, n_levels=2, dim=4, hidden=4, beta=2.0,
                    radius=(0.0, 0.0), top_beta=8.0)
    model = Glom(spec)
    sim = e @ e.transpose(-1, -2)
    eye = torch.eye(5, dtype=torch.bool)
    want = [torch.softmax((b * sim[:, lvl]).masked_fill(eye, float("-inf")), -1)
            for lvl, b in enumerate((2.0, 8.0))]
    got = attention_weights(e, model.betas(), model.bias)
    torch.testing.assert_close(got, torch.stack(want, 1))
    torch.testing.assert_close(model.consensus(e), torch.stack(want, 1) @ e)
    for top in (0.0, 2.0):  # the old path: one number
        same = Glom(GlomSpec(**{**spec.__dict__, "top_beta": top}))
        assert same.betas() == 2.0
        torch.testing.assert_close(attention_weights(e, same.betas(), same.bias),
                                   torch.softmax((2.0 * sim).masked_fill(eye, float("-inf")),
                                                 -1))
    assert "top_beta" in " ".join(GlomSpec(image=(1, 4, 4), top_beta=-1.0).problems())


def test_far_radius_hand_computed():
    """rules.glom.far_mask with model.far_radius: per level, the same image's columns farther
    than the radius are the negatives, not those outside the attention window."""
    model = Glom(GlomSpec(image=(1, 4, 16), patch=4, n_levels=2, dim=4, hidden=4,
                          radius=(1.0, 0.0)))  # one row of 4 columns
    window = rule.far_mask(model)  # default: outside each level's window
    assert window[0].int().tolist() == [[0, 0, 1, 1], [0, 0, 0, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert not window[1].any()  # a global level has no far columns
    model.far_radius = (0.0, 1.5)
    far = rule.far_mask(model)
    assert far[0].int().tolist() == (1 - torch.eye(4, dtype=torch.int)).tolist()
    assert far[1].int().tolist() == [[0, 0, 1, 1], [0, 0, 0, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    model.far_radius = (1.0,)
    with pytest.raises(ValueError, match="far_radius"):
        rule.far_mask(model)


def test_top_image_negatives_only_change_the_top_level():
    """top_image_negatives: with image_negatives off, the top level's bottom-up loss still
    contrasts with the other images' same column; the levels below keep far negatives only."""
    model = small_glom(3)
    model.tau, model.far_negatives, model.image_negatives = 0.1, True, False
    model.far_radius = (0.0, 0.0, 0.0)  # every other column of the image is a far negative
    x = torch.rand(4, 1, 8, 8)
    cols = model.columns(x)
    e = model.init_state(cols)
    plain, bu, _, att = rule.local_losses(model, cols, e, "float32")
    model.top_image_negatives = True
    mixed, *_ = rule.local_losses(model, cols, e, "float32")
    far = rule.far_mask(model)
    torch.testing.assert_close(mixed["bu"][:2], plain["bu"][:2])
    torch.testing.assert_close(mixed["td"], plain["td"])
    want = rule.info_nce(bu[:, 2:], att[:, 2:], 0.1, far[2:], other_images=True)
    torch.testing.assert_close(mixed["bu"][2:], want)
    assert mixed["bu"][2] > plain["bu"][2]  # more negatives: a larger loss here


def test_position_share_hand_computed():
    """glom_parts.position_share: between-column over total variance of foreground columns."""
    from mortal.recipes.glom_parts import position_share

    # 2 images, 1 level, 2 columns, D = 1: column 0 holds 1 and 3, column 1 holds 5 and 7;
    # total variance about the mean 4: 9 + 1 + 1 + 9 = 20; column means 2 and 6: 4 * 4 = 16
    e = torch.tensor([[[[1.0], [5.0]]], [[[3.0], [7.0]]]])
    fg = torch.ones(2, 2, dtype=torch.bool)
    assert position_share(e, fg, min_count=2) == [pytest.approx(0.8)]
    same = torch.tensor([[[[1.0], [1.0]]], [[[3.0], [3.0]]]])  # what, not where: share 0
    assert position_share(same, fg, min_count=2) == [pytest.approx(0.0)]
    where = torch.tensor([[[[1.0], [5.0]]], [[[1.0], [5.0]]]])  # where only: share 1
    assert position_share(where, fg, min_count=2) == [pytest.approx(1.0)]


def test_position_baseline_clusters_columns_by_distance_alone():
    """glom_parts.position_ari by hand on one row of 5 columns, ids 1 1 0 2 2: the two pairs
    are 1 column apart inside and 3 apart on average between, so a cut of 1 finds both
    (ARI 1) and a cut of 3 merges them into one island (ARI 0 against two objects)."""
    from mortal.recipes.glom_parts import position_ari

    ids = torch.tensor([[1, 1, 0, 2, 2]])
    assert position_ari(ids, (1, 5), 1.0) == pytest.approx(1.0)
    assert position_ari(ids, (1, 5), 2.9) == pytest.approx(1.0)
    assert position_ari(ids, (1, 5), 3.0) == pytest.approx(0.0)
    # cluster() is cluster_similarity() on cosines
    emb = np.random.default_rng(0).normal(size=(7, 3))
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for t in (-0.5, 0.0, 0.5):
        assert (rule.cluster(emb, t) == rule.cluster_similarity(u @ u.T, t)).all()


def test_pos_scale_sets_how_much_position_reaches_the_nets():
    """GlomSpec.pos_scale multiplies the position code; at 0 two columns with the same pixels
    get the same level-0 bottom-up prediction, at 1 their positions tell them apart."""
    from mortal.arch.glom import position_code

    def net(scale: float) -> Glom:
        torch.manual_seed(0)
        return Glom(GlomSpec(image=(1, 4, 12), patch=4, context=0, n_levels=2, dim=4, hidden=8,
                             radius=(0.0, 0.0), pos_scale=scale))

    x = torch.ones(1, 1, 4, 12)  # three columns with identical (all-ink) pixels
    torch.testing.assert_close(net(0.5).pos, 0.5 * position_code((1, 3), 4))
    for scale, same in ((0.0, True), (1.0, False)):
        model = net(scale)
        cols = model.columns(x)
        b0 = model.bottom_up(cols, model.init_state(cols))[0, 0]  # (N, D) level 0
        assert torch.allclose(b0[0], b0[1]) == same
    assert "pos_scale" in " ".join(GlomSpec(image=(1, 4, 4), pos_scale=-1.0).problems())


def test_column_classes_hand_computed():
    obj = torch.zeros(1, 4, 4, dtype=torch.long)
    obj[0, :2, :2] = 1  # top-left patch: object 1
    obj[0, 2:, 2:] = 2  # bottom-right patch: object 2
    classes = torch.tensor([[3, 0]])
    assert parts.column_classes(obj, classes, 2).tolist() == [[3, -1, -1, 0]]


def test_supervised_per_column_loss_is_the_cross_entropy_of_labelled_columns():
    torch.manual_seed(0)
    model = small_glom(2)
    r = rule.GlomRule(mode="supervised", iterations=2, n_classes=3, dtype="float32")
    head = rule.make_head(model, r)
    x = torch.rand(2, 1, 8, 8)
    y = torch.tensor([[0, -1, 2, 1], [-1, -1, 1, -1]])  # 4 columns, -1: no object
    with torch.no_grad():  # the same forward by hand
        cols = model.columns(x)
        e = model.init_state(cols)
        for _ in range(2):
            e = update(e, model.bottom_up(cols, e), model.top_down(e), model.consensus(e),
                       model.spec.weights)
        logits = head(e[:, -1])
        keep = y >= 0
        want = torch.nn.functional.cross_entropy(logits[keep], y[keep])
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.0)
    got = rule.paper_step(model, head, x, y, r, opt, torch.Generator().manual_seed(0))
    assert got["loss_main"] == pytest.approx(float(want), rel=1e-5)


def spied_model() -> tuple[Glom, list[torch.Tensor]]:
    """A small 16x16 GLOM whose `columns` records every image batch it is given."""
    model = Glom(GlomSpec(image=(1, 16, 16), patch=4, n_levels=2, dim=8, hidden=16,
                          radius=(0.0, 0.0)))
    seen: list[torch.Tensor] = []
    columns = model.columns

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return columns(x)

    model.columns = spy
    return model, seen


def test_view_mask_hides_whole_columns_in_each_view_independently():
    model, seen = spied_model()
    r = rule.GlomRule(views=2, shift=0, view_mask=0.5, ink_only=True, dtype="float32")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    rule.local_step(model, torch.ones(8, 1, 16, 16), r, opt, g=torch.Generator().manual_seed(0))
    x = seen[0]  # (16, 1, 16, 16): the two views of 8 images
    per_col = x.unfold(2, 4, 4).unfold(3, 4, 4).sum((-1, -2)).flatten(1)  # (16, 16) columns
    assert set(per_col.unique().tolist()) == {0.0, 16.0}  # whole columns hidden, others intact
    hidden = per_col == 0
    assert 0.3 < hidden.float().mean() < 0.7
    assert not torch.equal(hidden[:8], hidden[8:])  # each view has its own mask


def test_goodness_losses_hand_computed():
    # One real image and its hybrid, 2 levels, 2 columns, 2 dims.
    bu = torch.tensor([[[[1.0, 1.0], [3.0, 1.0]], [[0.0, 2.0], [0.0, 0.0]]],
                       [[[1.0, 0.0], [1.0, 1.0]], [[2.0, 2.0], [0.0, 0.0]]]])
    weight = torch.tensor([[0.5, 0.5], [1.0, 0.0]])  # the hybrid has ink in column 0 only
    # mean squares: real level 0 (1 + 5) / 2 = 3, level 1 (2 + 0) / 2 = 1;
    # hybrid level 0 0.5, level 1 4.
    got = rule.goodness_losses(bu, weight, 1, 2.0)
    # goodness is the log: the loss reads the ratio of real to hybrid
    want = torch.tensor([math.log1p(math.exp(-math.log(3 / 0.5) / 2)),
                         math.log1p(math.exp(-math.log(1 / 4) / 2))])
    torch.testing.assert_close(got, want)


def test_goodness_loss_reaches_only_its_levels_bottom_up_net():
    model, x, cols, e = small_state(4)
    _, bu, _, _ = rule.local_losses(model, cols, e, "float32", scored=2)
    good = rule.goodness_losses(bu, rule.image_ink_weights(x, 4), 2, 1.0)
    good[2].backward(retain_graph=True)
    assert model.bottom.w1.grad[1].abs().sum() > 0 and model.bottom.w1.grad[0].abs().sum() == 0
    assert all(untouched(p) for p in [*model.bottom0.parameters(), *model.top.parameters()])
    model.zero_grad(set_to_none=True)
    good[0].backward()
    assert model.bottom0.w1.grad.abs().sum() > 0
    assert all(untouched(p) for p in [*model.bottom.parameters(), *model.top.parameters()])


def test_scored_images_alone_make_the_consensus_losses():
    model, x, cols, e = small_state(6)
    some, bu, _, _ = rule.local_losses(model, cols, e, "float32", scored=4)
    alone, bu4, _, _ = rule.local_losses(model, cols[:4], e[:4], "float32")
    assert bu.shape[0] == 6  # the unscored images are still predicted
    torch.testing.assert_close(bu[:4], bu4)
    for k in ("bu", "td"):
        torch.testing.assert_close(some[k], alone[k])


def test_hybrids_and_image_ink_weights():
    x = torch.zeros(3, 1, 8, 8)
    for i in range(3):
        x[i, 0, :4] = i + 1.0  # image i: value i + 1 in its top half
    neg = rule.hybrids(x, 2, torch.Generator().manual_seed(0))
    assert neg.shape == x.shape
    for i in range(3):  # every pixel is the image's own or one other image's
        own = neg[i] == x[i]
        others = [j for j in range(3) if j != i and bool(((neg[i] == x[j]) | own).all())]
        assert len(others) >= 1
    w = rule.image_ink_weights(x, 4)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.5, 0.0, 0.0]] * 3))
    assert torch.equal(rule.image_ink_weights(torch.zeros(1, 1, 8, 8), 4),
                       torch.full((1, 4), 0.25))


def test_unit_bottom_up_reads_only_the_direction():
    spec = dict(image=(1, 8, 8), patch=4, n_levels=2, dim=4, hidden=8, radius=(0.0, 0.0))
    e = torch.nn.functional.normalize(torch.randn(2, 2, 4, 4), dim=-1)
    bu, td, att = torch.randn(2, 2, 4, 4), torch.randn(2, 1, 4, 4), torch.randn(2, 2, 4, 4)
    unit = Glom(GlomSpec(**spec, unit_bottom_up=True))
    plain = Glom(GlomSpec(**spec))
    torch.testing.assert_close(unit.combine(e, 5 * bu, td, att), unit.combine(e, bu, td, att))
    assert not torch.allclose(plain.combine(e, 5 * bu, td, att), plain.combine(e, bu, td, att))
    torch.testing.assert_close(
        unit.combine(e, bu, td, att),
        update(e, torch.nn.functional.normalize(bu, dim=-1), td, att, plain.spec.weights))


def test_goodness_training_step_logs_a_loss_per_level_and_learns():
    torch.manual_seed(0)
    model = Glom(GlomSpec(image=(1, 16, 16), patch=4, n_levels=2, dim=8, hidden=16,
                          radius=(1.5, 0.0), unit_bottom_up=True))
    r = rule.GlomRule(goodness_weight=1.0, ink_only=True, far_negatives=True,
                      image_negatives=False, iterations=2, lr=1e-2, dtype="float32")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.zeros(8, 1, 16, 16)
    for i in range(8):  # a bar at a different place in each image: hybrids break or add bars
        x[i, :, 2:14, i + 2 : i + 6] = 1.0
    g = torch.Generator().manual_seed(0)
    first = rule.local_step(model, x, r, opt, g=g)
    assert {"loss_good0", "loss_good1"} <= set(first)
    for _ in range(30):
        last = rule.local_step(model, x, r, opt, g=g)
    assert last["loss_good0"] < first["loss_good0"]
    with pytest.raises(ValueError, match="views=1"):
        rule.local_step(model, x, rule.GlomRule(goodness_weight=1.0, views=2), opt, g=g)


def test_residual_bottom_up_adds_the_level_below():
    spec = GlomSpec(image=(1, 8, 8), patch=4, n_levels=3, dim=4, hidden=8,
                    radius=(0.0, 0.0, 0.0), residual_bottom_up=True)
    model = Glom(spec)
    plain = Glom(GlomSpec(**{**spec.__dict__, "residual_bottom_up": False}))
    plain.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 8, 8)
    cols = model.columns(x)
    e = plain.init_state(cols)
    # x + MLP(x): the residual net's prediction is the plain net's plus the level below
    torch.testing.assert_close(model.bottom_up(cols, e)[:, 1:],
                               plain.bottom_up(cols, e)[:, 1:] + e[:, :-1])
    torch.testing.assert_close(model.bottom_up(cols, e)[:, 0], plain.bottom_up(cols, e)[:, 0])
    with torch.no_grad():  # with the MLPs silenced, every level starts as a copy of level 0
        model.bottom.w2.zero_()
        model.bottom.b2.zero_()
    s = model.init_state(cols)
    torch.testing.assert_close(s[:, 1], s[:, 0])
    torch.testing.assert_close(s[:, 2], s[:, 0])


def test_target_beta_sharpens_only_the_targets():
    model, _, cols, e = small_state(4)
    base, bu, td, att = rule.local_losses(model, cols, e, "float32")
    model.target_beta = model.spec.beta  # the model's own beta: the same targets
    same, *_ = rule.local_losses(model, cols, e, "float32")
    model.target_beta = 30.0
    sharp, bu2, _, att2 = rule.local_losses(model, cols, e, "float32")
    for k in ("bu", "td"):
        torch.testing.assert_close(same[k], base[k])
    # the dynamics' consensus and the predictions are unchanged; the losses are against the
    # sharper attention's averages
    torch.testing.assert_close(att2, att)
    torch.testing.assert_close(bu2, bu)
    goal = consensus(e, 30.0, model.bias)
    torch.testing.assert_close(sharp["bu"], rule.info_nce(bu, goal, 0.1))
    assert not torch.allclose(sharp["bu"], base["bu"])


def test_views_can_be_rotated_and_zoomed_and_the_default_draws_nothing_more():
    model, seen = spied_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.zeros(4, 1, 16, 16)
    x[:, 0, 6:10, 2:14] = 1.0  # a bar: a rotation moves its ends
    for r in (rule.GlomRule(views=2, shift=0, dtype="float32"),
              rule.GlomRule(views=2, shift=0, rotate=40.0, scale=0.2, dtype="float32")):
        rule.local_step(model, x, r, opt, g=torch.Generator().manual_seed(0))
    plain, turned = seen
    assert torch.equal(plain, torch.cat([x, x]))  # no rotation drawn: the images themselves
    assert not torch.allclose(turned[:4], x) and not torch.allclose(turned[:4], turned[4:])
    from mortal.config import build
    from mortal.recipes.glom_mnist import Config
    assert build(Config, {"rotate": "15", "scale": "0.1"}).rotate == 15.0
    with pytest.raises(ValueError, match="only with views=2"):
        build(Config, {"rotate": "15", "views": "1"})
