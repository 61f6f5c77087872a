"""Rotation and zoom of image batches (mortal.data.augment.affine), against exact cases."""

from __future__ import annotations

import torch

from mortal.data.augment import affine, random_affine


def test_affine_quarter_turns_equal_rot90_and_zero_is_identity():
    x = torch.rand(4, 2, 6, 6)
    y = affine(x, torch.tensor([90.0, 180.0, -90.0, 0.0]), torch.ones(4))
    for i, k in enumerate((1, 2, -1, 0)):  # counter-clockwise as drawn, row 0 on top
        torch.testing.assert_close(y[i], torch.rot90(x[i], k, (1, 2)), atol=1e-6, rtol=0)


def test_affine_zoom_doubles_a_centred_square():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1:3, 1:3] = 1.0
    y = affine(x, torch.zeros(1), torch.full((1,), 2.0))[0, 0]
    # output pixel centres at +-0.75 (normalised) read the input at +-0.375, a quarter of the
    # way from pixel 0 (0) to pixel 1 (1) in index units: 0.75 along each axis
    edge = torch.tensor([0.75, 1.0, 1.0, 0.75])
    torch.testing.assert_close(y, edge[:, None] * edge[None, :])


def test_random_affine_draws_per_image_within_its_bounds():
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 1:8] = 1.0  # a horizontal bar through the centre
    assert random_affine(x, 0.0, 0.0) is x
    g = torch.Generator().manual_seed(0)
    y = random_affine(x, 30.0, 0.0, g)
    assert not torch.equal(y[0], y[1])  # each image its own angle
    # a rotation about the centre keeps the centre pixel and at most tilts the bar by 30
    # degrees: the end pixels (3 from the centre) stay within 3 sin 30 = 1.5 rows of it
    torch.testing.assert_close(y[:, 0, 4, 4], torch.ones(64))
    assert y[:, 0, :2].abs().max() < 1e-6 and y[:, 0, 7:].abs().max() < 1e-6
    assert torch.equal(random_affine(x, 30.0, 0.1, torch.Generator().manual_seed(1)),
                       random_affine(x, 30.0, 0.1, torch.Generator().manual_seed(1)))
