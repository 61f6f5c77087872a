"""ff-recurrent-mnist: FF in a recurrent net with top-down connections, §4 of Hinton (2022).

A static MNIST image is a video of identical frames. Hidden layers update synchronously from
the normalised states of the layers below and above (`mortal.arch.recurrent`), damped 0.3 old
/ 0.7 new; the label is a one-of-10 vector clamped above the top hidden layer. FF trains every
layer at every iteration: positive = the image with its label, negative = with a wrong one;
the input of each layer at each iteration is detached, so no gradient crosses a layer or an
iteration (no backprop through time). To classify, run 8 iterations with each label and pick
the one whose goodness, summed over the hidden layers and iterations 3 to 5, is highest.
Paper: 1.31 % test error after 60 epochs. The paper's hidden-layer count and width are not
verified here (the paper's figure shows the GLOM-like diagram); the default below is 2x2000,
and the recipe runs any stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from mortal.arch.recurrent import RecurrentStack
from mortal.config import check
from mortal.loop import (
    autocast,
    device_of,
    make_optimizer,
    resolve_dtype,
    seed_everything,
)
from mortal.recipes import Recipe, register
from mortal.recipes.common import load_split, standard_results
from mortal.rules import ff, ff_recurrent


@dataclass
class Config:
    """The paper's recurrence (8 iterations, damping 0.3, goodness of iterations 3-5, 60
    epochs); the rule's settings are ff-supervised-mnist's measured ones."""

    dataset: str = "mnist"
    data_root: str = ""
    widths: tuple[int, ...] = (2000, 2000)
    epochs: int = 60
    batch_size: int = 250
    iterations: int = 8
    damping: float = 0.3
    score_from: int = 3  # classify by the goodness of iterations score_from..score_to (1-based)
    score_to: int = 5
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 4e-4
    weight_decay: float = 3e-4
    loss: Literal["threshold", "pairwise"] = "pairwise"
    threshold: float = 1.0
    temperature: float = 3.0
    # the clamped label's loudness: the normalised one-hot times this (1: like every input
    # unit, so 10 of the top layer's 10 + width inputs; `RecurrentStack.label`)
    label_value: float = 1.0
    hard_negatives_every: int = 5  # epochs between hard-negative tables (0 = uniform wrong labels)
    # dropout on the image pixels, one mask per image for all iterations and for both its
    # positive and negative runs (ff-supervised-mnist's regulariser; 0 = off): 1.79 % after
    # 60 epochs at 0.2, against 2.05 % at 0, the default until 2026-12-06 (docs/results.md)
    input_dropout: float = 0.2
    # peer normalisation (ff-supervised-mnist's regulariser, `ff_recurrent.Peer`; 0 = off) and
    # the hidden units' nonlinearity ("relu_st": ReLU whose gradient passes through, so the
    # peer term can wake a silent unit)
    peer_weight: float = 0.0
    peer_momentum: float = 0.9
    activation: Literal["relu", "relu_st"] = "relu"
    eval_every: int = 10
    eval_limit: int = 0  # test images for the periodic evaluations (0 = all); the final uses all
    # "fast": hand-written passes (mortal/rules/ff_recurrent.py) where they apply (dense
    # stacks); "reference": autograd through `layer_losses` (same maths, slower)
    impl: Literal["fast", "reference"] = "fast"
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bf16 if native
    device: str = "auto"
    seed: int = 0
    train_limit: int = 0

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype, self.device)

    def validate(self) -> list[str]:
        p: list[str] = []
        check(self.epochs >= 1 and self.batch_size >= 1, "epochs, batch_size must be >= 1", p)
        check(len(self.widths) >= 1, "widths needs at least one hidden layer", p)
        check(0 <= self.damping < 1, "damping must be in [0, 1)", p)
        check(0 <= self.input_dropout < 1, "input_dropout must be in [0, 1)", p)
        check(self.peer_weight >= 0 and 0 <= self.peer_momentum < 1,
              "peer_weight must be >= 0 and peer_momentum in [0, 1)", p)
        check(1 <= self.score_from <= self.score_to <= self.iterations,
              "need 1 <= score_from <= score_to <= iterations", p)
        check(self.lr > 0 and self.temperature > 0, "lr and temperature must be > 0", p)
        check(self.hard_negatives_every >= 0 and self.eval_every >= 1,
              "hard_negatives_every >= 0, eval_every >= 1", p)
        return p


def one_hot(y: torch.Tensor, n: int = 10) -> torch.Tensor:
    """The clamped label vector (the stack sets its loudness: `RecurrentStack.label`)."""
    return nn.functional.one_hot(y, n).float()


def layer_losses(net: RecurrentStack, x: torch.Tensor, y_pos: torch.Tensor, y_neg: torch.Tensor,
                 cfg: Any, goodness: str = "sumsq", peer: ff_recurrent.Peer | None = None
                 ) -> list[torch.Tensor]:
    """Every layer's FF loss summed over the iterations, positive and negative runs fused into
    one batch; each layer's input is detached, so each loss reaches only its own layer.
    `goodness` names an entry of ff.GOODNESS (ff-cifar10 also uses "neg_sumsq"); any stack
    with initial / inputs / mix works (dense or locally connected maps). `peer`: each loss
    also holds the peer-normalisation term of its layer (`ff_recurrent.Peer`), whose running
    means move once the step's iterations are done."""
    fn, sign = ff.GOODNESS[goodness]
    n = len(x)
    xx = torch.cat([x, x])
    yy = torch.cat([one_hot(y_pos), one_hot(y_neg)])
    with torch.no_grad(), autocast(x.device, cfg.dtype):
        states = net.initial(xx)
    totals = [torch.zeros((), device=x.device) for _ in net.layers]
    for _ in range(cfg.iterations):
        ins = net.inputs(states, xx, yy)  # states are detached: nothing flows back in time
        new_states = []
        for j, (layer, s, i) in enumerate(zip(net.layers, states, ins, strict=True)):
            with autocast(x.device, cfg.dtype):
                h = net.mix(s, layer(i))
            g = fn(h)
            if cfg.loss == "pairwise":
                loss = ff.pairwise_loss(g[:n], g[n:], cfg.temperature)
            else:  # the threshold is per unit, signed like the goodness
                loss = ff.ff_loss(g[:n], g[n:], sign * cfg.threshold * h[0].numel(),
                                  cfg.temperature)
            totals[j] = totals[j] + loss / cfg.iterations
            if peer is not None:  # autograd differentiates the term through the mean
                totals[j] = totals[j] + peer.term(j, h[:n].float().mean(0), cfg.iterations)[0]
            new_states.append(h.detach())
        states = new_states
    if peer is not None:
        peer.end_step()
    return totals


def update(opts: list[torch.optim.Optimizer], losses: list[torch.Tensor]) -> torch.Tensor:
    """Step every layer's optimiser on its own loss (each loss reaches only its own layer's
    weights); returns the losses, detached, on the CPU."""
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    sum(losses).backward()
    for opt in opts:
        opt.step()
    return torch.stack([v.detach().float() for v in losses]).cpu()


def fast(net: torch.nn.Module, cfg: Any) -> bool:
    """Whether the hand-written passes of mortal.rules.ff_recurrent run this net."""
    return getattr(cfg, "impl", "reference") == "fast" and ff_recurrent.supports(net)


@torch.no_grad()
def goodness_by_iteration(net: RecurrentStack, x: torch.Tensor, cfg: Config, iterations: int,
                          batch_size: int = 1000, compiled: bool = False) -> torch.Tensor:
    """(N, 10, iterations): for each label, the goodness summed over the hidden layers at
    each iteration of a run with that label clamped (`compiled`: the fast path's elementwise
    passes through torch.compile)."""
    out = torch.empty(len(x), 10, iterations, device=x.device)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        if fast(net, cfg):
            out[i : i + len(xb)] = ff_recurrent.goodness_by_iteration(
                net, xb, cfg, iterations, compiled=compiled)
            continue
        for c in range(10):
            y = one_hot(torch.full((len(xb),), c, device=x.device))
            with autocast(x.device, cfg.dtype):
                runs = net.run(xb, y, iterations)
            for t, states in enumerate(runs):
                out[i : i + len(xb), c, t] = sum(ff.sum_squares(h) for h in states)
    return out


def goodness_scores(net: RecurrentStack, x: torch.Tensor, cfg: Config,
                    compiled: bool = False) -> torch.Tensor:
    """(N, 10): goodness summed over the hidden layers and iterations score_from..score_to."""
    g = goodness_by_iteration(net, x, cfg, cfg.score_to, compiled=compiled)
    return g[:, :, cfg.score_from - 1 :].sum(2)


def error_pct(net: RecurrentStack, x: torch.Tensor, y: torch.Tensor, cfg: Config,
              compiled: bool = False) -> float:
    """Test error (%) of classification by goodness."""
    return ff.error_pct(goodness_scores(net, x, cfg, compiled).argmax(1), y)


@torch.no_grad()
def silent_units_pct(net: RecurrentStack, x: torch.Tensor, y: torch.Tensor, cfg: Config,
                     batch_size: int = 1000) -> list[float]:
    """Per hidden layer, the % of units that are zero on every image (its true label clamped)
    at every scored iteration: capacity the trained net does not use."""
    active = [torch.zeros(w, dtype=torch.bool, device=x.device) for w in net.widths]
    for i in range(0, len(x), batch_size):
        with autocast(x.device, cfg.dtype):
            runs = net.run(x[i : i + batch_size], one_hot(y[i : i + batch_size]), cfg.score_to)
        for states in runs[cfg.score_from - 1 :]:
            for j, h in enumerate(states):
                active[j] |= (h > 0).any(0)
    return [round(100.0 * (1.0 - a.float().mean().item()), 2) for a in active]


def train(cfg: Config, run: Any) -> dict[str, Any]:
    """FF on the recurrent net: epochs of fused positive/negative iterations per batch."""
    seed_everything(cfg.seed)
    device = device_of(cfg.device)
    data = load_split(cfg.dataset, cfg.data_root, device, cfg.train_limit)
    net = RecurrentStack(data.x_train.shape[1], cfg.widths, damping=cfg.damping,
                         act=cfg.activation, label_scale=cfg.label_value).to(device)
    peer = ff_recurrent.Peer(cfg.peer_weight, cfg.peer_momentum) if cfg.peer_weight > 0 else None
    opts = [make_optimizer(cfg.optimizer, layer.parameters(), cfg.lr, cfg.weight_decay)
            for layer in net.layers]
    steps = len(data.x_train) // cfg.batch_size
    # the fast path's elementwise passes compiled, on long runs on a CPU (as ff.train does)
    use_fast = fast(net, cfg)
    compiled = use_fast and device.type == "cpu" and cfg.epochs * steps >= ff.FUSE_MIN_STEPS
    x_eval = data.x_test[: cfg.eval_limit] if cfg.eval_limit else data.x_test
    y_eval = data.y_test[: cfg.eval_limit] if cfg.eval_limit else data.y_test

    def losses(x: torch.Tensor, y: torch.Tensor, y_neg: torch.Tensor, g: torch.Generator
               ) -> list[torch.Tensor]:
        if cfg.input_dropout > 0:
            x = x * ff.dropout_mask(x.shape, cfg.input_dropout, g).to(x.device)
        if not use_fast:
            return layer_losses(net, x, y, y_neg, cfg, peer=peer)
        for opt in opts:  # the same gradients without autograd
            opt.zero_grad(set_to_none=True)
        return ff_recurrent.layer_gradients(net, x, y, y_neg, cfg, compiled, peer)

    def apply(out: list[torch.Tensor]) -> torch.Tensor:
        if not use_fast:
            return update(opts, out)
        for opt in opts:
            opt.step()
        return torch.stack(out).float()

    def on_epoch(epoch: int, row: dict[str, Any]) -> None:
        if (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.epochs:
            row["test_error_pct"] = error_pct(net, x_eval, y_eval, cfg, compiled)

    ff_recurrent.train_epochs(
        net, opts, data.x_train, data.y_train, cfg, run, losses=losses, apply=apply,
        scores=lambda x: goodness_scores(net, x, cfg, compiled),
        name="the recurrent FF network", on_epoch=on_epoch, peer=peer)
    g = goodness_by_iteration(net, data.x_test, cfg, cfg.iterations, compiled=compiled)
    test_error = ff.error_pct(g[:, :, cfg.score_from - 1 : cfg.score_to].sum(2).argmax(1),
                              data.y_test)
    # how the answer forms over the iterations: classify by one iteration's goodness
    by_iterations = {str(t + 1): round(ff.error_pct(g[:, :, t].argmax(1), data.y_test), 3)
                     for t in range(cfg.iterations)}
    # the same measure on (up to) 10,000 training images: how much of the error is fitting
    train_error = error_pct(net, data.x_train[:10000], data.y_train[:10000], cfg, compiled)
    silent = silent_units_pct(net, data.x_test, data.y_test, cfg)
    run.log(epoch=cfg.epochs, test_error_pct=test_error, train_error_pct=train_error,
            silent_units_pct=silent)
    return standard_results(
        RECIPE, cfg, run, len(data.x_train), test_error,
        test_error_by_single_iteration=by_iterations, train_error_pct=round(train_error, 3),
        silent_units_pct=silent, dtype=cfg.dtype,
    )


RECIPE = register(Recipe(
    name="ff-recurrent-mnist",
    paper="Hinton 2022, The Forward-Forward Algorithm, §4 (top-down effects in perception)",
    setting="MNIST as a video of static frames; recurrent FF with bottom-up and top-down "
            "inputs, 8 damped iterations, label clamped on top, goodness of iterations 3-5",
    dataset="mnist",
    paper_test_error_pct=1.31,
    config=Config,
    train=train,
    before={"input_dropout": 0.0},  # added 2026-12-06 as 0; 0.2 since the fourth session
))
