"""Vote levels (mortal.arch.glom_votes, mortal.rules.glom_votes): the attention, the losses, the
frozen level below, and a short learning test on glom-parts' images."""

from __future__ import annotations

import math

import torch

from mortal.arch.glom_votes import PATCH, VoteLevel, patch_centres, patches, settle
from mortal.data.parts import column_ids, make_parts
from mortal.recipes import glom_parts_votes as recipe
from mortal.rules import glom_votes as rule


def test_settle_by_hand_and_background_ignored():
    """Two foreground columns 2 px apart, sigma 1, beta 0: each keeps weight 1 / (1 + e^-2)
    on itself, so after one round they sit 2 / (e^2 + 1) px in from where they were. A far
    background column changes nothing."""
    centre = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [100.0, 0.0]]])
    code = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    fg = torch.tensor([[True, True, False]])
    c, k = settle(centre, code, fg, rounds=1, sigma=1.0, beta=0.0)
    step = 2 / (math.e**2 + 1)
    assert torch.allclose(c[0, 0], torch.tensor([step, 0.0]), atol=1e-6)
    assert torch.allclose(c[0, 1], torch.tensor([2 - step, 0.0]), atol=1e-6)
    assert torch.allclose(k[0, :2], code[0, :2])
    # beta > 0 with different codes keeps them apart more: the weight on the other drops
    code2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    c2, _ = settle(centre, code2, fg, rounds=1, sigma=1.0, beta=2.0)
    assert c2[0, 0, 0] < c[0, 0, 0]


def test_vote_density_by_hand():
    """Columns at x = 0 and 3 voting for x = 1 and 2 (offsets 1, squared distance 1), sigma 1,
    lam 0.5: each column's term is 0.5 * 1 - log exp(-1/2) = 1. A background column's vote,
    wherever it is, is left out."""
    centres = torch.tensor([[0.0, 0.0], [3.0, 0.0], [9.0, 9.0]])
    votes = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [1.5, 0.0]]])
    fg = torch.tensor([[True, True, False]])
    assert torch.allclose(rule.vote_density(votes, fg, centres, 1.0, 0.5), torch.tensor(1.0))


def test_vote_density_across_the_islands_below_by_hand():
    """Columns 0 and 1 share an island below, column 2 is in another. Votes at x = 0, 0, 1,
    sigma 1, lam 0: the pair (0, 1) does not count, so columns 0 and 1 each have only column
    2's e^-1/2 (term 0.5) and column 2 has both, log(2 e^-1/2) (term 0.5 - log 2). A level
    whose islands copy the ones below pays far more than one that spans them."""
    centres = torch.zeros(3, 2)
    votes = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]])
    below = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [100.0, 0.0]]])
    fg = torch.ones(1, 3, dtype=torch.bool)
    got = rule.vote_density(votes, fg, centres, 1.0, 0.0, below)
    assert torch.allclose(got, torch.tensor((1.5 - math.log(2)) / 3), atol=1e-5)
    # four columns, two islands below (0, 1 and 2, 3): a copy of them costs about -log 1e-6
    # (the floor of w) against -log 2 for one island over both; counting every pair, the
    # copy costs about 0 against -log 3
    below4 = torch.tensor([[[0.0, 0.0]] * 2 + [[100.0, 0.0]] * 2])
    copy = torch.tensor([[[0.0, 0.0]] * 2 + [[8.0, 0.0]] * 2])
    whole = torch.zeros(1, 4, 2)
    fg4, c4 = torch.ones(1, 4, dtype=torch.bool), torch.zeros(4, 2)
    assert torch.allclose(rule.vote_density(copy, fg4, c4, 1.0, 0.0, below4),
                          torch.tensor(-math.log(1e-6)), atol=1e-3)
    assert torch.allclose(rule.vote_density(whole, fg4, c4, 1.0, 0.0, below4),
                          torch.tensor(-math.log(2)), atol=1e-5)
    assert torch.allclose(rule.vote_density(copy, fg4, c4, 1.0, 0.0), torch.tensor(0.0),
                          atol=1e-5)
    assert torch.allclose(rule.vote_density(whole, fg4, c4, 1.0, 0.0),
                          torch.tensor(-math.log(3)), atol=1e-5)


def test_density_ramp():
    assert [rule.ramped(0.02, s, 4) for s in (0, 1, 3, 4, 100)] == [0.005, 0.01, 0.02, 0.02,
                                                                    0.02]
    assert rule.ramped(0.02, 0, 0) == 0.02


def test_patches_and_centres_are_row_major():
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    p = patches(img)
    assert p.shape == (1, 4, PATCH * PATCH)
    assert torch.equal(p[0, 1], img[0, 0, :4, 4:].reshape(-1))  # second column: top right
    assert torch.equal(patch_centres(8, 8), torch.tensor([[2.0, 2.0], [6.0, 2.0], [2.0, 6.0],
                                                          [6.0, 6.0]]))


def test_votes_stay_within_reach_and_shapes():
    torch.manual_seed(0)
    level = VoteLevel((48, 64), k=4, reach=5.0)
    b = make_parts(2, 0)
    fg = column_ids(b.object_ids, PATCH) > 0
    votes, centre, code = level(b.images, fg)
    assert votes.shape == centre.shape == (2, 192, 2) and code.shape == (2, 192, 4)
    assert ((votes - level.centres).abs() <= 5.0).all()
    assert torch.allclose(code.sum(-1), torch.ones(2, 192), atol=1e-5)
    assert level.draw(centre, code).shape == (2, 192, 16)


def test_the_level_below_learns_nothing_from_the_level_above():
    torch.manual_seed(0)
    below, above = VoteLevel((48, 64)), VoteLevel((48, 64), draws=4 + 2)
    b = make_parts(4, 1, 0.5, layout="touching")
    fg = column_ids(b.object_ids, PATCH) > 0
    terms = rule.level_loss(above, below, b.images, fg, 0.01, 2.0, 0.01)
    terms["loss"].backward()
    assert all(p.grad is None for p in below.parameters())
    assert all(p.grad is not None for p in above.parameters())


def test_a_part_level_learns_parts_in_seconds():
    """100 steps of level 0 (lam 0.03, as the recipe) at ambiguity 0: its islands match the
    true parts (ARI > 0.85 at a 2 px cut on 16 fresh images); the untrained level's do not
    (about 0.69, docs/glom.md)."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    level = VoteLevel((48, 64))

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = make_parts(16, 500 + step, 0.0, layout="touching")
        return b.images, column_ids(b.object_ids, PATCH) > 0

    class NoRun:  # train_level's run: no files
        train_seconds = 0.0
        resume_state = staticmethod(lambda: (0, None))
        log = save = staticmethod(lambda *a, **k: None)
        timed = staticmethod(lambda: __import__("contextlib").nullcontext())

    test = make_parts(16, 99, 0.0, layout="touching")
    part, fg = column_ids(test.part_ids, PATCH), column_ids(test.object_ids, PATCH) > 0
    before = recipe.mean_ari(recipe.settled(level, test.images, fg)[1], part, 2.0)[0]
    rule.train_level(level, None, batch, 100, NoRun(), density=0.1, density_sigma=2.0,
                     lam=0.03, lr=1e-3, log_every=50, progress=False)
    after = recipe.mean_ari(recipe.settled(level, test.images, fg)[1], part, 2.0)[0]
    assert before < 0.8 and after > 0.85, (before, after)


def test_draw_loss_pixels_and_the_level_below():
    """A field drawing 16 + 6 numbers is scored on the pixels (cross-entropy, first 16) plus
    the level below's summary (squared error, last 6); one drawing 6 on the summary alone;
    any other size is an error that names the sizes it expects."""
    import pytest
    import torch.nn.functional as F

    torch.manual_seed(0)
    b = make_parts(2, 3, 0.5, layout="touching")
    fg = column_ids(b.object_ids, PATCH) > 0
    target = torch.randn(2, 192, 6)
    both, below_only = VoteLevel((48, 64), draws=22), VoteLevel((48, 64), draws=6)
    for level, want in ((both, lambda d: F.binary_cross_entropy_with_logits(
                            d[..., :16][fg], patches(b.images)[fg])
                            + F.mse_loss(d[..., 16:][fg], target[fg])),
                        (below_only, lambda d: F.mse_loss(d[fg], target[fg]))):
        _, centre, code = level(b.images, fg)
        got = rule.draw_loss(level, centre, code, fg, b.images, target)
        assert torch.allclose(got, want(level.draw(centre, code)))
    with pytest.raises(ValueError, match="expected 6 .* or 22"):
        rule.draw_loss(VoteLevel((48, 64), draws=16), centre, code, fg, b.images, target)


def test_islands_and_their_ari_by_hand():
    """Centres at x = 0, 1 and 10, 12 (y = 0): a 3 px cut makes the two pairs (mean distance 1
    and 2, the pairs 10.5 apart), a 20 px cut one island. Against ids 1 1 2 2 (with a
    background column left out) that is ARI 1 with 2 islands, then ARI 0 with 1 island."""
    centres = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [10.0, 0.0], [12.0, 0.0]]])
    ids = torch.tensor([[1, 1, 0, 2, 2]])
    assert recipe.mean_ari(centres, ids, 3.0) == (1.0, 2.0)
    assert recipe.mean_ari(centres, ids, 20.0) == (0.0, 1.0)


def test_an_interrupted_level_resumes_to_the_same_weights(tmp_path):
    """train_level for 6 steps in one go, and for 3 steps then resumed to 6 from its
    checkpoint (a new process would do the same): the same weights, bit for bit."""
    from mortal.runs import Run

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = make_parts(4, 700 + step, 0.5, layout="touching")
        return b.images, column_ids(b.object_ids, PATCH) > 0

    def trained(out, steps: int, resume: bool) -> VoteLevel:
        torch.manual_seed(0)
        level = VoteLevel((48, 64))
        run = Run(out, "test", {"a": 1}, resume=resume, quiet=True, record_env=False)
        rule.train_level(level, None, batch, steps, run, density=0.1, density_sigma=2.0,
                         lam=0.03, lr=1e-3, log_every=3, progress=False)
        return level

    whole = trained(tmp_path / "whole", 6, False)
    trained(tmp_path / "split", 3, False)
    resumed = trained(tmp_path / "split", 6, True)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 2


def test_inked_columns_are_the_true_foreground_of_the_parts_world():
    """The attention's foreground is read from the pixels (>= 25 % ink); in glom-parts' images
    every inked pixel belongs to an object, so it is exactly the columns the ground truth
    calls foreground, and the scores on the true ids cover the same columns."""
    from mortal.arch.glom_votes import inked

    b = make_parts(32, 11, 0.5, layout="touching")
    assert torch.equal(inked(b.images), column_ids(b.object_ids, PATCH) > 0)
    assert inked(torch.full((1, 1, 8, 8), 0.25)).all() and not inked(torch.zeros(1, 1, 8, 8)).any()
