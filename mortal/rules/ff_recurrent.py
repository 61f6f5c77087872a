"""FF on the dense recurrent stack (`mortal.arch.recurrent.RecurrentStack`, §4 of the FF
paper) in hand-written passes: the same maths as `ff_recurrent_mnist.layer_losses` (autograd,
the reference) and `goodness_by_iteration`, arranged for speed.

* Feature-major: every state is a (units, N) matrix, so each matmul is a plain W @ X.
* The image is the same at every iteration, and the same for a positive and its negative (and
  for all ten labels when classifying), so the first layer's image part W_x norm(x) is
  computed once per run on n columns, and its weight gradient once per step from dz summed
  over iterations and over each positive / negative pair.
* The weight gradients of all iterations are one matmul per weight: each iteration's dz and
  input are kept in (units, iterations, N) buffers.
* No autograd graph: d loss / d z is written out (sum-of-squares goodness, the damped ReLU
  update), with autograd only on the per-example goodness for the loss's own derivative.

`supports` says when this path applies (the recipe falls back to the reference otherwise);
`tests/test_recurrent.py` checks both give the same losses and gradients.

`train_epochs` is the training loop of every recurrent FF net (ff-recurrent-mnist's dense
stack, ff-cifar10's locally connected maps), whichever path computes the updates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mortal.arch.dense import Dense
from mortal.arch.recurrent import RecurrentStack
from mortal.data.negatives import hard_wrong_labels, wrong_labels
from mortal.loop import DTYPES, epoch_order, set_lr
from mortal.rules import ff, ff_fused
from mortal.runs import check_finite


@dataclass
class Peer:
    """Peer normalisation for a recurrent FF net (`ff.peer_loss`, as in the feed-forward net):
    at every iteration each layer also pays `weight` times the spread of its units' running
    mean activity on the positive runs (averaged over iterations), so no unit stays silent or
    dominates. `means` holds each layer's running mean, moved once per step (`end_step`) by
    the mean over that step's iterations; None until a layer's first step."""

    weight: float
    momentum: float = 0.9
    means: list[torch.Tensor | None] = field(default_factory=list)
    # this step, per layer: (running mean before it, sum of the iterations' means, count)
    _step: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=dict,
                                                                     repr=False)

    def term(self, j: int, pm: torch.Tensor, iterations: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer j's peer term at one of a step's `iterations` iterations, from the positive
        runs' mean activity per unit `pm`: (weight * ff.peer_loss / iterations, which autograd
        can differentiate through pm; its gradient with respect to pm, for hand-written
        passes). Records pm for `end_step`."""
        if j not in self._step:
            self.means += [None] * (j + 1 - len(self.means))
            prev = self.means[j]
            if prev is None:  # the first step: start from the layer's mean
                prev = torch.full_like(pm.detach(), float(pm.detach().mean()))
            self._step[j] = (prev, torch.zeros_like(pm.detach()), 0)
        prev, total, count = self._step[j]
        self._step[j] = (prev, total + pm.detach(), count + 1)
        loss, new = ff.peer_loss(prev, pm, self.momentum)
        scale = self.weight / iterations
        return scale * loss, (scale * (1.0 - self.momentum) * 2.0 / len(new)) * (new - new.mean())

    def end_step(self) -> None:
        """Move every layer's running mean by the mean over this step's iterations."""
        for j, (prev, total, count) in self._step.items():
            self.means[j] = (self.momentum * prev + (1.0 - self.momentum) * total / count).detach()
        self._step.clear()

    def saved(self) -> list[torch.Tensor]:
        """The running means for a checkpoint (an empty tensor for a layer not yet seen)."""
        return [torch.empty(0) if t is None else t for t in self.means]

    def load(self, saved: list[torch.Tensor]) -> None:
        """Restore the running means from `saved`."""
        self.means = [t if t.numel() else None for t in saved]


def train_epochs(net: torch.nn.Module, opts: list[torch.optim.Optimizer], x: torch.Tensor,
                 y: torch.Tensor, cfg: Any, run: Any, *,
                 losses: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator],
                                  list[torch.Tensor]],
                 apply: Callable[[list[torch.Tensor]], torch.Tensor],
                 scores: Callable[[torch.Tensor], torch.Tensor],
                 name: str, on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
                 peer: Peer | None = None) -> None:
    """Train a recurrent FF net for cfg.epochs (resumable per epoch from `run`): one optimiser
    per layer on the cooldown schedule from cfg.lr; wrong labels uniform, or every
    cfg.hard_negatives_every epochs drawn in proportion to the net's own beliefs `scores(x)`
    (B, 10). Per batch, `losses(x, y, y_neg, g)` gives each layer's loss (and, on the
    hand-written path, its gradients), which is checked finite before `apply(losses)` updates
    the layers and returns them as a tensor. `on_epoch(epoch, row)` may add to each epoch's
    metrics row (an evaluation, say). `peer`: the peer-normalisation state the losses update,
    kept in the checkpoint so a resumed run continues it."""
    start, state = run.resume_state()
    y_neg_table = None
    if state is not None:
        net.load_state_dict(state["net"])
        for opt, s in zip(opts, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        y_neg_table = state.get("y_neg_table")
        if peer is not None and "peer_means" in state:
            peer.load(state["peer_means"])
    steps = len(x) // cfg.batch_size
    for epoch in range(start, cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        if cfg.hard_negatives_every and epoch > 0 and epoch % cfg.hard_negatives_every == 0:
            with run.timed():  # wrong labels in proportion to the net's own beliefs
                s = scores(x)
                y_neg_table = hard_wrong_labels(s / s.std(), y, g)
        order = epoch_order(len(x), cfg.seed, epoch, x.device)
        sums = torch.zeros(len(net.layers))
        with run.timed():
            for i in tqdm(range(steps), desc=f"{name}, epoch {epoch + 1}/{cfg.epochs}",
                          leave=False, disable=run.quiet):
                step = epoch * steps + i
                for opt in opts:
                    set_lr(opt, cfg.lr * ff.cooldown_factor(step / (cfg.epochs * steps)))
                idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                y_pos = y[idx]
                y_neg = (y_neg_table[idx] if y_neg_table is not None
                         else wrong_labels(y_pos, 10, g))
                out = losses(x[idx], y_pos, y_neg, g)
                check_finite({f"layer {j + 1} loss": v for j, v in enumerate(out)}, step, name)
                sums += apply(out)
        row: dict[str, Any] = {"epoch": epoch + 1, "seconds": round(run.train_seconds, 2),
                               **{f"loss_layer{j + 1}": float(v / steps)
                                  for j, v in enumerate(sums)}}
        if on_epoch is not None:
            on_epoch(epoch, row)
        run.log(**row)
        run.save(epoch + 1, {"net": net.state_dict(),
                             "optimizers": [o.state_dict() for o in opts],
                             **({"y_neg_table": y_neg_table} if y_neg_table is not None else {}),
                             **({"peer_means": peer.saved()} if peer is not None else {})})


def supports(net: torch.nn.Module) -> bool:
    """A plain dense RecurrentStack of Dense ReLU layers (ff-cifar10's local maps have their
    own passes: mortal.rules.ff_maps)."""
    return type(net) is RecurrentStack and all(
        type(layer) is Dense and layer.act_name in ("relu", "relu_st") for layer in net.layers)


def norm_cols(s: torch.Tensor) -> torch.Tensor:
    """Each column of s (units, N) scaled to root-mean-square 1, in s's dtype."""
    sf = s.float()
    return (sf * ff.rms_scale(sf.square().sum(0), s.shape[0])[None, :]).to(s.dtype)


def goodness_loss(ss: torch.Tensor, n: int, units: int, cfg: Any, sign: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One iteration's FF loss of a layer (cfg.loss, divided by cfg.iterations), its goodness
    sign times each column's sum of squares ss (2n: the positive runs first), and the loss's
    gradient with respect to ss, for the hand-written passes."""
    s = ss.detach().requires_grad_()
    g = sign * s
    if cfg.loss == "pairwise":
        loss = ff.pairwise_loss(g[:n], g[n:], cfg.temperature)
    else:  # the threshold is per unit, signed like the goodness
        loss = ff.ff_loss(g[:n], g[n:], sign * cfg.threshold * units, cfg.temperature)
    loss = loss / cfg.iterations
    (grad,) = torch.autograd.grad(loss, s)
    return loss.detach(), grad


def _pre_activation(za: torch.Tensor, zb: torch.Tensor, b: torch.Tensor, reps: int
                    ) -> torch.Tensor:
    """z + b in fp32 from the above part za (units, N) and the below part zb (units, N / reps,
    repeated: the image part is shared by the runs of an image)."""
    return za.float() + zb.float().repeat(1, reps) + b[:, None]


def update_state(za: torch.Tensor, zb: torch.Tensor, b: torch.Tensor, s: torch.Tensor,
                 damping: float, reps: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The damped update h = d s + (1 - d) relu(z + b) in s's dtype, each column's sum of
    squares of h (the goodness) and h normalised (the next iteration's input), in one pass."""
    h = (damping * s.float() + (1.0 - damping) * torch.relu(_pre_activation(za, zb, b, reps))
         ).to(s.dtype)
    hf = h.float()
    ss = (hf * hf).sum(0)
    return h, ss, (hf * ff.rms_scale(ss, h.shape[0])[None, :]).to(h.dtype)


def state_gradient(h: torch.Tensor, za: torch.Tensor, zb: torch.Tensor, b: torch.Tensor,
                   c: torch.Tensor, damping: float, reps: int, relu: bool, pairs: bool,
                   peer: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d loss / d z = (2 c h + peer) (1 - d) relu'(z) for goodness gradient c (N,) and the
    peer term's d loss / d h (units,), which reaches the positive runs (the first N/2
    columns) only: in h's dtype, its sum over columns (the bias gradient) and, with `pairs`,
    each positive's plus its negative's (columns j and j + N/2; for the shared image part),
    fp32."""
    dz = (2.0 * (1.0 - damping)) * h.float() * c[None, :]
    if peer is not None:
        half = h.shape[1] // 2
        dz = torch.cat([dz[:, :half] + (1.0 - damping) * peer[:, None], dz[:, half:]], 1)
    if relu:
        dz = torch.where(_pre_activation(za, zb, b, reps) > 0, dz, torch.zeros_like(dz))
    half = h.shape[1] // 2
    pair = dz[:, :half] + dz[:, half:] if pairs else dz[:, :0]
    return dz.to(h.dtype), dz.sum(1), pair


ff_fused.KERNELS.update({"recurrent_update": update_state, "recurrent_grad": state_gradient})


class _Weights:
    """The layers' weights split by input block, in the compute dtype: for layer l, `below`
    (the image for l = 0) and `above` (the next layer, or the label vector on top)."""

    def __init__(self, net: RecurrentStack, d_in: int, dt: torch.dtype) -> None:
        self.below, self.above, self.bias = [], [], []
        widths = net.widths
        for j, layer in enumerate(net.layers):
            w = layer.linear.weight.detach().to(dt)
            nb = d_in if j == 0 else widths[j - 1]
            self.below.append(w[:, :nb])
            self.above.append(w[:, nb:])
            self.bias.append(layer.linear.bias.detach().float())


def _initial(net: RecurrentStack, wts: _Weights, image_part: torch.Tensor, reps: int
             ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """States after one bottom-up pass (`RecurrentStack.initial`): the top-down and label
    inputs are zero; computed on the n distinct images, then repeated `reps` times. Returns
    the states and their normalised copies."""
    states = []
    z = image_part.float()
    for j in range(len(net.layers)):
        if j > 0:
            z = torch.mm(wts.below[j], norm_cols(states[-1])).float()
        states.append(torch.relu(z + wts.bias[j][:, None]).to(image_part.dtype))
    states = [s.repeat(1, reps) for s in states]
    return states, [norm_cols(s) for s in states]


def _parts(wts: _Weights, normed: list[torch.Tensor], image_part: torch.Tensor,
           labels: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer j's input blocks at this iteration, above and below (the normalised states at
    t-1; the label vector above the top layer), and the matmul of each: (above, za, zb); zb
    is the image part, n columns, for the first layer."""
    above = normed[j + 1] if j + 1 < len(normed) else labels
    za = torch.mm(wts.above[j], above)
    zb = image_part if j == 0 else torch.mm(wts.below[j], normed[j - 1])
    return above, za, zb


def layer_gradients(net: RecurrentStack, x: torch.Tensor, y_pos: torch.Tensor,
                    y_neg: torch.Tensor, cfg, compiled: bool = False, peer: Peer | None = None
                    ) -> list[torch.Tensor]:
    """Set every layer's weight and bias .grad to the gradient of its FF loss summed over
    `cfg.iterations` iterations (divided by their number), positive runs with labels y_pos and
    negative runs with y_neg; return the losses. `ff_recurrent_mnist.layer_losses` followed by
    backward gives the same (the reference). `compiled`: the elementwise passes through
    torch.compile (worth it on long runs). `peer`: add peer normalisation (its loss is in the
    returned losses) and move its running means."""
    dt = DTYPES[cfg.dtype]
    n, n_layers, iters = len(x), len(net.layers), cfg.iterations
    wts = _Weights(net, x.shape[1], dt)
    n_classes = wts.above[-1].shape[1]
    x_t = ff.normalise(x).t().to(dt).contiguous()  # (D, n)
    y = torch.cat([y_pos, y_neg])
    labels = net.label(F.one_hot(y, n_classes).float()).t().to(dt).contiguous()  # (C, 2n)
    image_part = torch.mm(wts.below[0], x_t)  # (w0, n): the image's contribution, once
    states, normed = _initial(net, wts, image_part, 2)
    # each iteration's dz and input blocks, for one weight-gradient matmul per block
    dev = x.device
    dz_buf = [torch.empty(w, iters, 2 * n, dtype=dt, device=dev) for w in net.widths]
    below_buf = [None] + [torch.empty(net.widths[j - 1], iters, 2 * n, dtype=dt, device=dev)
                          for j in range(1, n_layers)]
    above_buf = [torch.empty(w, iters, 2 * n, dtype=dt, device=dev)
                 for w in [*net.widths[1:], n_classes]]
    gb = [torch.zeros(w, device=dev) for w in net.widths]
    image_dz = torch.zeros(net.widths[0], n, device=dev)
    totals = [torch.zeros((), device=dev) for _ in range(n_layers)]
    for t in range(iters):
        new_states, new_normed = [], []
        for j in range(n_layers):
            above, za, zb = _parts(wts, normed, image_part, labels, j)
            reps = 2 if j == 0 else 1
            h, ss, hn = ff_fused.call("recurrent_update", compiled, za, zb, wts.bias[j],
                                      states[j], net.damping, reps)
            loss, c = goodness_loss(ss, n, h.shape[0], cfg)
            totals[j] = totals[j] + loss
            dh_peer = None
            if peer is not None:  # its gradient per positive column: d pm / d h = 1 / n
                term, d_pm = peer.term(j, h[:, :n].float().mean(1), iters)
                totals[j] = totals[j] + term
                dh_peer = d_pm / n
            dz, gbj, pair = ff_fused.call("recurrent_grad", compiled, h, za, zb, wts.bias[j],
                                          c, net.damping, reps,
                                          net.layers[j].act_name == "relu", j == 0, dh_peer)
            gb[j] += gbj
            dz_buf[j][:, t] = dz
            above_buf[j][:, t] = above
            if j == 0:
                image_dz += pair
            else:
                below_buf[j][:, t] = normed[j - 1]
            new_states.append(h)
            new_normed.append(hn)
        states, normed = new_states, new_normed
    if peer is not None:
        peer.end_step()
    for j, layer in enumerate(net.layers):
        dzs = dz_buf[j].view(net.widths[j], -1)
        w = layer.linear.weight
        grad = torch.empty_like(w)
        nb = wts.below[j].shape[1]
        if j == 0:
            grad[:, :nb] = torch.mm(image_dz.to(dt), x_t.t())
        else:
            grad[:, :nb] = torch.mm(dzs, below_buf[j].view(nb, -1).t())
        grad[:, nb:] = torch.mm(dzs, above_buf[j].view(w.shape[1] - nb, -1).t())
        w.grad = grad
        layer.linear.bias.grad = gb[j].to(layer.linear.bias.dtype)
    return totals


@torch.no_grad()
def goodness_by_iteration(net: RecurrentStack, x: torch.Tensor, cfg, iterations: int,
                          n_classes: int = 10, compiled: bool = False) -> torch.Tensor:
    """(N, n_classes, iterations): for each label clamped in turn, the goodness summed over
    the hidden layers at each iteration (`ff_recurrent_mnist.goodness_by_iteration`), all
    labels in one run whose image part is computed once."""
    dt = DTYPES[cfg.dtype]
    n = len(x)
    wts = _Weights(net, x.shape[1], dt)
    x_t = ff.normalise(x).t().to(dt).contiguous()
    y = torch.arange(n_classes, device=x.device).repeat_interleave(n)  # label c: columns c*n..
    labels = net.label(F.one_hot(y, n_classes).float()).t().to(dt).contiguous()
    image_part = torch.mm(wts.below[0], x_t)
    states, normed = _initial(net, wts, image_part, n_classes)
    out = torch.empty(n_classes, n, iterations, device=x.device)
    for t in range(iterations):
        results = []
        for j in range(len(net.layers)):
            _, za, zb = _parts(wts, normed, image_part, labels, j)
            results.append(ff_fused.call("recurrent_update", compiled, za, zb, wts.bias[j],
                                         states[j], net.damping, n_classes if j == 0 else 1))
        states = [h for h, _, _ in results]
        normed = [hn for _, _, hn in results]
        out[:, :, t] = sum(ss for _, ss, _ in results).view(n_classes, n)
    return out.permute(1, 0, 2)
