"""Property tests: invariants that must hold for any input, not just hand-picked ones."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mortal.data.negatives import embed_label, wrong_labels
from mortal.rules import ff
from mortal.runs import checkpoint


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 8), st.integers(1, 40), st.floats(0.01, 100.0), st.integers(0, 2**31))
def test_normalise_hides_the_length(n, d, scale, seed):
    """Scaling an activity vector does not change what the next layer sees."""
    h = torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) + 0.01
    a, b = ff.normalise(h), ff.normalise(h * scale)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert torch.allclose(ff.sum_squares(a), torch.full((n,), float(d)), rtol=1e-4)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 12), st.integers(1, 64), st.integers(0, 2**31))
def test_wrong_labels_are_wrong(n_classes, n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    neg = wrong_labels(y, n_classes, g)
    assert not (neg == y).any() and neg.min() >= 0 and neg.max() < n_classes
    x = torch.rand(n, n_classes + 5, generator=g)
    e = embed_label(x, y, n_classes)
    assert torch.equal(e[:, :n_classes].argmax(1), y) and torch.equal(e[:, n_classes:],
                                                                        x[:, n_classes:])


@settings(max_examples=25, deadline=None)
@given(st.recursive(st.one_of(st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=3),
                              st.none(), st.booleans()),
                    lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(min_size=1, max_size=3), kids, max_size=3),
                    max_leaves=10))
def test_checkpoint_round_trips_any_nesting(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("ck") / "c.safetensors"
    state = {"v": value, "t": torch.arange(3.0), "ints": {1: torch.ones(2), 2: "x"}}
    checkpoint.save(path, state)
    back = checkpoint.load(path)
    assert back["v"] == value and torch.equal(back["t"], state["t"])
    assert back["ints"][2] == "x" and torch.equal(back["ints"][1], torch.ones(2))
