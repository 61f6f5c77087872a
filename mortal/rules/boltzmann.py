"""Boltzmann machines: binary RBMs (CD-k, persistent CD), Gaussian-Bernoulli RBMs, DBNs, AIS.

Shapes: visible states v are (batch, n_vis), hidden states h are (batch, n_hid); an RBM's weights
w are (n_vis, n_hid), its visible biases b (n_vis,) and hidden biases c (n_hid,). Energy of a
binary RBM: E(v, h) = -v.b - h.c - v w h; free energy F(v) = -v.b - sum_j softplus((v w + c)_j).

Pieces, in order: sampling (`GibbsChain` holds persistent chains), the CD-k gradient, a training
loop with momentum, weight decay and a CD-k schedule, partition functions (exact by enumeration
for tiny models; annealed importance sampling, Salakhutdinov & Murray 2008, for real ones), the
Gaussian-Bernoulli RBM with the Gibbs-Langevin sampler and modified CD of Liao et al. (2022), and
deep belief nets (greedy stacking, the up-down algorithm of Hinton, Osindero & Teh 2006).
bf16 is used only for the matmuls that drive sampling and CD statistics (see docs/boltzmann.md for
the check); partition functions and likelihoods are computed in fp32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mortal import distributed
from mortal.loop import DTYPES, epoch_order, lr_factor, resolve_dtype
from mortal.runs import Run, check_finite

Hidden = Literal["binary", "nrelu"]


def mm(a: torch.Tensor, b: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """a @ b computed in `dtype` (bf16 is several times faster here), returned in fp32."""
    if dtype == "float32":
        return a @ b
    dt = DTYPES[dtype]
    return (a.to(dt) @ b.to(dt)).float()


@dataclass
class ShardRNG:
    """A generator for one data-parallel process: every draw is that of the whole global batch
    (`world` times this process's rows), of which the process keeps its own slice of rows, so
    the samples are those one process would draw on the combined batch (at `world` times the
    random-number cost)."""

    g: torch.Generator
    rank: int
    world: int


Rng = torch.Generator | ShardRNG | None


def _draw(fn: Callable[..., torch.Tensor], shape: torch.Size, g: Rng,
          device: torch.device) -> torch.Tensor:
    """fn(shape) from generator g; under a ShardRNG, this process's rows of the global draw."""
    if isinstance(g, ShardRNG):
        full = fn((shape[0] * g.world, *shape[1:]), generator=g.g, device=device)
        return distributed.shard(full, g.rank, g.world)
    return fn(shape, generator=g, device=device)


def gather_rows(t: torch.Tensor, g: ShardRNG) -> torch.Tensor:
    """The global batch assembled from every process's rows (process r holds rows r*b..(r+1)*b):
    a sum over processes of zero-padded copies, so exact."""
    b = t.shape[0]
    full = t.new_zeros((b * g.world, *t.shape[1:]))
    full[g.rank * b:(g.rank + 1) * b] = t
    return distributed.all_sum(full)


def bernoulli(p: torch.Tensor, g: Rng = None) -> torch.Tensor:
    """Binary samples with P(1) = p (float 0/1, the same shape as p)."""
    return (_draw(torch.rand, p.shape, g, p.device) < p).float()


# --- binary RBM -----------------------------------------------------------------------------
@dataclass
class RBM:
    """A restricted Boltzmann machine; the last `n_softmax` visible units form one softmax group
    (the label units of a DBN's top layer); hidden units are binary or noisy rectified linear."""

    w: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    hidden: Hidden = "binary"
    n_softmax: int = 0

    @classmethod
    def init(cls, n_vis: int, n_hid: int, seed: int, std: float = 0.01,
             b: torch.Tensor | None = None, **kw: Any) -> RBM:
        """Small random weights N(0, std^2), zero hidden biases, visible biases `b` (else 0)."""
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n_vis, n_hid, generator=g) * std
        return cls(w, torch.zeros(n_vis) if b is None else b.clone().float(),
                   torch.zeros(n_hid), **kw)

    @property
    def n_vis(self) -> int:
        """Number of visible units."""
        return self.w.shape[0]

    @property
    def n_hid(self) -> int:
        """Number of hidden units."""
        return self.w.shape[1]

    def state(self) -> dict[str, torch.Tensor]:
        """The parameters, for checkpoints."""
        return {"w": self.w, "b": self.b, "c": self.c}

    def load(self, state: dict[str, torch.Tensor]) -> RBM:
        """Set the parameters from `state` (as written by `state`)."""
        self.w, self.b, self.c = (state[k].clone().float() for k in ("w", "b", "c"))
        return self

    def to(self, device: torch.device) -> RBM:
        """The same RBM on `device`."""
        self.w, self.b, self.c = self.w.to(device), self.b.to(device), self.c.to(device)
        return self


def in_dtype(rbm: RBM, dtype: str) -> RBM:
    """The same RBM with its weights cast once to the matmul `dtype` (biases shared), so a
    k-step chain does not cast them 2k + 2 times: at batch 100 the casts cost as much as the
    bf16 matmuls themselves. Results are bit-identical to casting at every matmul."""
    if dtype == "float32":
        return rbm
    return RBM(rbm.w.to(DTYPES[dtype]), rbm.b, rbm.c, rbm.hidden, rbm.n_softmax)


def hidden_input(rbm: RBM, v: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """Total input to each hidden unit, v w + c: (batch, n_hid)."""
    return mm(v, rbm.w, dtype) + rbm.c


def hidden_mean(rbm: RBM, x: torch.Tensor) -> torch.Tensor:
    """E[h | input x]: sigmoid for binary units, max(0, x) for noisy rectified linear ones."""
    return torch.sigmoid(x) if rbm.hidden == "binary" else x.clamp(min=0)


def hidden_sample(rbm: RBM, x: torch.Tensor, g: Rng = None) -> torch.Tensor:
    """h ~ p(h | input x). Noisy ReLU (Nair & Hinton 2010): max(0, x + N(0, sigmoid(x)))."""
    if rbm.hidden == "binary":
        return bernoulli(torch.sigmoid(x), g)
    noise = _draw(torch.randn, x.shape, g, x.device) * torch.sigmoid(x).sqrt()
    return (x + noise).clamp(min=0)


def visible_probs(rbm: RBM, h: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """p(v_i = 1 | h): logistic units, and a softmax over the last `n_softmax` units."""
    x = mm(h, rbm.w.T, dtype) + rbm.b
    if not rbm.n_softmax:
        return torch.sigmoid(x)
    k = rbm.n_softmax
    return torch.cat([torch.sigmoid(x[:, :-k]), torch.softmax(x[:, -k:], 1)], 1)


def visible_sample(rbm: RBM, p: torch.Tensor, g: Rng = None) -> torch.Tensor:
    """v ~ p(v | h) given its probabilities `p` (one-hot for the softmax group)."""
    if not rbm.n_softmax:
        return bernoulli(p, g)
    k = rbm.n_softmax
    if isinstance(g, ShardRNG):  # the global batch's softmax probabilities, then our rows
        full = gather_rows(p[:, -k:].contiguous(), g)
        pick = distributed.shard(torch.multinomial(full, 1, generator=g.g), g.rank, g.world)
    else:
        pick = torch.multinomial(p[:, -k:], 1, generator=g)
    onehot = torch.zeros_like(p[:, -k:]).scatter_(1, pick, 1.0)
    return torch.cat([bernoulli(p[:, :-k], g), onehot], 1)


def free_energy(rbm: RBM, v: torch.Tensor) -> torch.Tensor:
    """F(v) = -v.b - sum_j softplus((v w + c)_j) of a binary RBM, in fp32: (batch,)."""
    return -(v @ rbm.b) - F.softplus(v @ rbm.w + rbm.c).sum(1)


@dataclass
class GibbsChain:
    """Batched block-Gibbs chains whose state persists between calls (persistent CD, sampling
    from a trained model, AIS-free visualisation)."""

    v: torch.Tensor

    def run(self, rbm: RBM, k: int, g: Rng = None, dtype: str = "float32"
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """k sweeps h ~ p(h|v), v ~ p(v|h); returns (p(v|h) of the last sweep, E[h|v] of the new v)
        and keeps the sampled v as the chain's state."""
        rbm = in_dtype(rbm, dtype)
        p = self.v
        for _ in range(k):
            h = hidden_sample(rbm, hidden_input(rbm, self.v, dtype), g)
            p = visible_probs(rbm, h, dtype)
            self.v = visible_sample(rbm, p, g)
        return p, hidden_mean(rbm, hidden_input(rbm, self.v, dtype))


def cd_gradient(rbm: RBM, v0: torch.Tensor, k: int = 1, chain: GibbsChain | None = None,
                g: Rng = None, dtype: str = "float32"
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The CD-k estimate of the log-likelihood gradient (ascent direction) on the batch v0, the
    batch's one-step reconstruction probabilities and the negative-phase visible sample v_k.

    Positive statistics use E[h|v0]; the negative ones the sampled v_k and E[h|v_k]. With
    `chain` (persistent CD) the negative phase continues that chain instead of starting at v0."""
    n = v0.shape[0]
    rbm = in_dtype(rbm, dtype)
    x0 = hidden_input(rbm, v0, dtype)
    h0 = hidden_mean(rbm, x0)
    recon = visible_probs(rbm, hidden_sample(rbm, x0, g), dtype)
    if chain is None:
        # CD: the chain starts at the data; its first visible step is the reconstruction.
        chain = GibbsChain(visible_sample(rbm, recon, g))
        _, hk = chain.run(rbm, k - 1, g, dtype)
    else:
        _, hk = chain.run(rbm, k, g, dtype)
    vk = chain.v
    # <v h>_data - <v h>_model as one matmul over both phases (K = 2n): no difference pass
    grads = {"w": mm(torch.cat([v0, vk]).T, torch.cat([h0, -hk]), dtype).div_(n),
             "b": (v0 - vk).mean(0), "c": (h0 - hk).mean(0)}
    return grads, recon, vk


def average_over_processes(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each gradient averaged across data-parallel processes (one all-reduce of them all)."""
    flat = distributed.all_sum(torch.cat([t.reshape(-1) for t in grads.values()]))
    flat /= distributed.world()
    parts = flat.split([t.numel() for t in grads.values()])
    return {k: p.view_as(t) for (k, t), p in zip(grads.items(), parts, strict=True)}


@dataclass
class RBMTraining:
    """Settings of the CD / PCD training loop (the defaults are those of Hinton & Salakhutdinov's
    released rbm.m: lr 0.1, momentum 0.5 then 0.9, weight cost 2e-4, batches of 100)."""

    epochs: int = 50
    batch_size: int = 100
    lr: float = 0.1
    momentum_start: float = 0.5
    momentum_end: float = 0.9
    momentum_switch_epoch: int = 5
    weight_decay: float = 2e-4
    k: int = 1
    k_end: int = 0  # > k: k grows linearly from k to k_end over training ("CD-T gradually")
    persistent: bool = False
    sample_inputs: bool = False  # treat inputs as probabilities; draw binary inputs per batch
    # "linear": the rate falls linearly from lr to 0 over all the run's updates (an annealed
    # rate, as in Tieleman 2008's PCD runs); "constant" keeps lr throughout
    lr_decay: Literal["constant", "linear"] = "constant"
    dtype: str = "auto"  # "auto": bf16 where the matmul unit has it (loop.resolve_dtype)
    seed: int = 0

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype)

    def lr_at(self, epoch: int, step: int, steps: int) -> float:
        """Learning rate of update `step` (0-based) of `epoch` (0-based), `steps` per epoch."""
        return decayed_lr(self.lr, self.lr_decay, epoch * steps + step, self.epochs * steps)

    def k_at(self, epoch: int) -> int:
        """Gibbs steps of the negative phase at `epoch` (0-based)."""
        if self.k_end <= self.k or self.epochs <= 1:
            return self.k
        return round(self.k + (self.k_end - self.k) * epoch / (self.epochs - 1))


def decayed_lr(lr: float, decay: str, update: int, updates: int) -> float:
    """The rate of update `update` (0-based) of `updates`: lr throughout ("constant"), or
    falling linearly from lr to 0 ("linear"), by the training loops' `loop.lr_factor`."""
    return lr * lr_factor(decay, update, updates)


def train_rbm(rbm: RBM, x: torch.Tensor, cfg: RBMTraining, run: Run | None = None,
              progress: bool = False, name: str = "rbm",
              labels: torch.Tensor | None = None) -> dict[str, float]:
    """Train `rbm` on rows of `x` by CD-k or PCD with momentum and weight decay; resumable when
    `run` is given (a checkpoint per epoch). `labels` (one-hot) are appended to each batch as the
    softmax visible units (a DBN's top layer). Returns the final reconstruction error.

    Data parallel under torch.distributed: every process takes its slice of each global batch,
    draws its random numbers as its rows of the global batch's draw (`ShardRNG`), and the CD
    statistics are averaged across processes, so the run is that of one process on the combined
    batch up to rounding order; persistent chains are gathered for checkpoints."""
    n = x.shape[0]
    steps = n // cfg.batch_size
    vel = {k: torch.zeros_like(v) for k, v in rbm.state().items()}
    g = torch.Generator(device=x.device).manual_seed(cfg.seed)
    dp = distributed.data_parallel()
    rng: Rng = ShardRNG(g, distributed.rank(), distributed.world()) if dp else g
    chain = None
    start = 0
    if run is not None:
        start, state = run.resume_state()
        if state is not None:
            rbm.load(state["rbm"])
            vel = state["vel"]
            g.set_state(state["gen"])
            if state.get("chain") is not None:  # saved whole: this process's rows of it
                chain = GibbsChain(distributed.shard(state["chain"]) if dp else state["chain"])
    row: dict[str, float] = {}
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        mom = cfg.momentum_start if epoch < cfg.momentum_switch_epoch else cfg.momentum_end
        k = cfg.k_at(epoch)
        err = torch.zeros(())
        order = epoch_order(n, cfg.seed, epoch, x.device)
        for i in range(steps):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            if dp:
                idx = distributed.shard(idx)  # this process's rows of the global batch
            v0 = bernoulli(x[idx], rng) if cfg.sample_inputs else x[idx]
            if labels is not None:
                v0 = torch.cat([v0, labels[idx]], 1)
            if cfg.persistent and chain is None:
                chain = GibbsChain(v0.clone())
            lr = cfg.lr_at(epoch, i, steps)
            grads, recon, _ = cd_gradient(rbm, v0, k, chain if cfg.persistent else None, rng,
                                          cfg.dtype)
            if dp:
                grads = average_over_processes(grads)
            grads["w"] = grads["w"] - cfg.weight_decay * rbm.w
            for key, p in rbm.state().items():
                vel[key].mul_(mom).add_(grads[key], alpha=lr)
                p.add_(vel[key])
            err += ((v0 - recon) ** 2).sum() / v0.shape[0]
        if dp:
            err = distributed.all_sum(err) / distributed.world()
        check_finite({f"{name}.w": rbm.w, f"{name}.c": rbm.c}, epoch, name)
        row = {"epoch": epoch + 1, f"{name}_recon_error": float(err) / steps, f"{name}_k": k,
               f"{name}_seconds": time.perf_counter() - t0}
        if run is not None:
            run.train_seconds += row[f"{name}_seconds"]
            run.log(**row)
            whole = None if chain is None else (
                gather_rows(chain.v, rng) if isinstance(rng, ShardRNG) else chain.v)
            run.save(epoch + 1, {"rbm": rbm.state(), "vel": vel, "gen": g.get_state(),
                                 "chain": whole})
        if progress:
            print(f"{name} epoch {epoch + 1}/{cfg.epochs}: recon error "
                  f"{row[f'{name}_recon_error']:.3f} (k={k}, {row[f'{name}_seconds']:.1f} s)",
                  flush=True)
    return {"recon_error": row.get(f"{name}_recon_error", float("nan"))}


# --- partition functions ----------------------------------------------------------------------
def log_z_exact(rbm: RBM) -> float:
    """log Z of a tiny binary RBM by enumerating the smaller layer (at most ~20 units), fp64."""
    w, b, c = rbm.w.double(), rbm.b.double(), rbm.c.double()
    if rbm.n_hid <= rbm.n_vis:
        states = _all_states(rbm.n_hid).double()
        terms = states @ c + F.softplus(states @ w.T + b).sum(1)
    else:
        states = _all_states(rbm.n_vis).double()
        terms = states @ b + F.softplus(states @ w + c).sum(1)
    return float(torch.logsumexp(terms, 0))


def _all_states(n: int) -> torch.Tensor:
    """All 2^n binary vectors of length n: (2^n, n)."""
    if n > 24:
        raise ValueError(f"enumerating 2^{n} states is too many; use AIS")
    idx = torch.arange(2**n).unsqueeze(1)
    return ((idx >> torch.arange(n)) & 1).float()


def base_rate_bias(x: torch.Tensor, smoothing: float = 0.05) -> torch.Tensor:
    """Visible biases of the base-rate model: log-odds of each unit's mean in the data, with
    `smoothing` pseudo-counts (as a fraction of the data) so that no bias is infinite."""
    n = x.shape[0]
    p = (x.float().sum(0) + smoothing * n) / (n + 2 * smoothing * n)
    return torch.log(p) - torch.log1p(-p)


def ais_betas(n_low: int = 500, n_mid: int = 4000, n_high: int = 10000) -> torch.Tensor:
    """The inverse temperatures of Salakhutdinov & Murray (2008): `n_low` evenly spaced on
    [0, 0.5), `n_mid` on [0.5, 0.9), `n_high` on [0.9, 1] (steps of 1e-3, 1e-4, 1e-5; 14,500
    intermediate distributions), then 1."""
    return torch.cat([torch.linspace(0, 0.5, n_low + 1)[:-1],
                      torch.linspace(0.5, 0.9, n_mid + 1)[:-1],
                      torch.linspace(0.9, 1.0, n_high + 1)]).double()


@dataclass
class AISResult:
    """log Z estimate with its +-3 standard-error interval and the per-run log weights."""

    log_z: float
    log_z_low: float
    log_z_high: float
    log_w: torch.Tensor = field(repr=False)
    v: torch.Tensor | None = field(default=None, repr=False)  # each run's final visible state


def ais_log_z(rbm: RBM, base_b: torch.Tensor, betas: torch.Tensor | None = None,
              n_runs: int = 100, seed: int = 0) -> AISResult:
    """Annealed importance sampling estimate of log Z of a binary RBM (fp32 sampling).

    The base model has visible biases `base_b`, no weights, and as many hidden units with zero
    biases as the RBM; intermediate distributions scale the energies of the base model by
    (1 - beta) and of the RBM by beta (Salakhutdinov & Murray 2008). Each transition is one
    Gibbs sweep at that beta. The estimate is log Z_A + log mean(w), the interval
    log(mean(w) +- 3 std(w)/sqrt(n_runs))."""
    betas = ais_betas() if betas is None else betas
    g = torch.Generator(device=rbm.w.device).manual_seed(seed)
    base_b = base_b.to(rbm.w)
    log_z_a = float(F.softplus(base_b.double()).sum() + rbm.n_hid * math.log(2))
    v = bernoulli(torch.sigmoid(base_b).expand(n_runs, -1), g)
    log_w = torch.zeros(n_runs, dtype=torch.float64, device=rbm.w.device)
    vb_gap = rbm.b - base_b
    for prev, beta in zip(betas[:-1].tolist(), betas[1:].tolist(), strict=True):
        x = v @ rbm.w + rbm.c
        step = (beta - prev) * (v @ vb_gap) + (F.softplus(beta * x) - F.softplus(prev * x)).sum(1)
        log_w += step.double()
        h = bernoulli(torch.sigmoid(beta * x), g)
        v = bernoulli(torch.sigmoid((1 - beta) * base_b + beta * (h @ rbm.w.T + rbm.b)), g)
    log_mean = float(torch.logsumexp(log_w, 0) - math.log(n_runs))
    w_rel = torch.exp(log_w - log_mean)  # weights relative to their mean
    rel_se = float(w_rel.std() / math.sqrt(n_runs)) if n_runs > 1 else float("inf")
    low = log_z_a + log_mean + (math.log(1 - 3 * rel_se) if 3 * rel_se < 1 else -math.inf)
    return AISResult(log_z_a + log_mean, low, log_z_a + log_mean + math.log1p(3 * rel_se), log_w,
                     v)


def _log_f(rbm: RBM, base_b: torch.Tensor, v: torch.Tensor, x: torch.Tensor, beta: float
           ) -> torch.Tensor:
    """log of the unnormalised marginal of v at inverse temperature beta (the AIS path), given
    x = v w + c: (1 - beta) v.base_b + beta v.b + sum_j softplus(beta x_j); (batch,) fp64."""
    return ((1 - beta) * (v @ base_b) + beta * (v @ rbm.b)
            + F.softplus(beta * x).sum(1)).double()


def raise_log_prob(rbm: RBM, base_b: torch.Tensor, v: torch.Tensor,
                   betas: torch.Tensor | None = None, n_chains: int = 1, seed: int = 0
                   ) -> torch.Tensor:
    """RAISE (Burda, Grosse & Salakhutdinov 2015): for each row of v, a stochastic lower bound
    on log p_ann(v), the log-probability under the distribution AIS's final samples follow (the
    RBM itself as the schedule grows). The annealing chain is run backwards: start at v, take a
    Gibbs sweep at each beta from 1 down to 0, and weight the path by
    p_base(v_0) prod_k f_k(v_k) / f_k(v_(k-1)); E[weight] = p_ann(v), so log of the mean weight
    over `n_chains` chains errs low. Returns (rows,) fp64. Where AIS missed part of Z, AIS
    log-likelihoods come out above these (the check of the paper's section 4)."""
    betas = ais_betas() if betas is None else betas
    g = torch.Generator(device=rbm.w.device).manual_seed(seed)
    base_b = base_b.to(rbm.w)
    vk = v.float().repeat_interleave(n_chains, 0)
    x = vk @ rbm.w + rbm.c
    log_w = torch.zeros(vk.shape[0], dtype=torch.float64, device=rbm.w.device)
    for beta in reversed(betas[1:].tolist()):  # T_k at beta_k, k = K .. 1
        log_w += _log_f(rbm, base_b, vk, x, beta)
        h = bernoulli(torch.sigmoid(beta * x), g)
        vk = bernoulli(torch.sigmoid((1 - beta) * base_b + beta * (h @ rbm.w.T + rbm.b)), g)
        x = vk @ rbm.w + rbm.c
        log_w -= _log_f(rbm, base_b, vk, x, beta)
    log_w += (vk @ base_b).double() - float(F.softplus(base_b.double()).sum())  # log p_base
    per_row = log_w.view(-1, n_chains)
    return torch.logsumexp(per_row, 1) - math.log(n_chains)


def log_z_lower_bound(rbm: RBM, states: torch.Tensor) -> float:
    """A sure lower bound on log Z: log sum of exp(-F(v)) over the distinct rows of `states`
    (any visible vectors, e.g. the training set or long Gibbs chains' states). If it exceeds an
    AIS estimate, AIS has missed probability mass."""
    distinct = torch.unique(states.float(), dim=0)
    return float(torch.logsumexp(-free_energy(rbm, distinct).double(), 0))


def mean_log_prob(rbm: RBM, v: torch.Tensor, log_z: float, batch_size: int = 5000) -> float:
    """Average log p(v) in nats over the rows of v: -F(v) - log Z."""
    neg_f = torch.cat([-free_energy(rbm, v[i:i + batch_size])
                       for i in range(0, v.shape[0], batch_size)])
    return float(neg_f.double().mean()) - log_z


# --- Gaussian-Bernoulli RBM -----------------------------------------------------------------
@dataclass
class GRBM:
    """Gaussian visible units with learned variances, binary hidden units (Liao et al. 2022):
    E(v, h) = sum_i (v_i - mu_i)^2 / (2 var_i) - sum_ij v_i / var_i w_ij h_j - h.c,
    so p(v | h) = N(mu + w h, var) and p(h_j = 1 | v) = sigmoid(((v / var) w)_j + c_j)."""

    w: torch.Tensor
    mu: torch.Tensor
    c: torch.Tensor
    log_var: torch.Tensor

    @classmethod
    def init(cls, n_vis: int, n_hid: int, seed: int, std: float = 0.01,
             var: float = 1.0) -> GRBM:
        """Small random weights, zero means and biases, all variances `var`."""
        g = torch.Generator().manual_seed(seed)
        return cls(torch.randn(n_vis, n_hid, generator=g) * std, torch.zeros(n_vis),
                   torch.zeros(n_hid), torch.full((n_vis,), math.log(var)))

    def params(self) -> dict[str, torch.Tensor]:
        """The parameters by name (for optimisers and checkpoints)."""
        return {"w": self.w, "mu": self.mu, "c": self.c, "log_var": self.log_var}


def grbm_hidden_probs(m: GRBM, v: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """p(h = 1 | v): (batch, n_hid)."""
    return torch.sigmoid(mm(v / m.log_var.exp(), m.w, dtype) + m.c)


def grbm_free_energy(m: GRBM, v: torch.Tensor) -> torch.Tensor:
    """F(v) = sum (v - mu)^2 / (2 var) - sum_j softplus(((v / var) w + c)_j): (batch,)."""
    var = m.log_var.exp()
    return (((v - m.mu) ** 2) / (2 * var)).sum(1) - F.softplus((v / var) @ m.w + m.c).sum(1)


def gibbs_langevin(m: GRBM, v: torch.Tensor, steps: int, step_size: float,
                   g: torch.Generator | None = None, dtype: str = "float32",
                   langevin_steps: int = 1) -> torch.Tensor:
    """Gibbs-Langevin sampling (Liao et al. 2022): h ~ p(h | v) exactly, then Langevin steps on v
    along grad_v log p(v, h) = (mu + w h - v) / var, with step size `step_size` * var per unit
    (preconditioned by the variances). Returns the final v."""
    var = m.log_var.exp()
    eta = step_size * var
    for _ in range(steps):
        h = bernoulli(grbm_hidden_probs(m, v, dtype), g)
        mean = m.mu + mm(h, m.w.T, dtype)
        for _ in range(langevin_steps):
            noise = torch.randn(v.shape, generator=g, device=v.device)
            v = v + eta * (mean - v) / var + (2 * eta).sqrt() * noise
    return v


def grbm_gibbs(m: GRBM, v: torch.Tensor, steps: int, g: torch.Generator | None = None,
               dtype: str = "float32") -> torch.Tensor:
    """Plain block Gibbs for a GRBM: h ~ p(h|v), v ~ N(mu + w h, var)."""
    std = (0.5 * m.log_var).exp()
    for _ in range(steps):
        h = bernoulli(grbm_hidden_probs(m, v, dtype), g)
        v = m.mu + mm(h, m.w.T, dtype) + std * torch.randn(v.shape, generator=g, device=v.device)
    return v


def grbm_cd_loss(m: GRBM, v_data: torch.Tensor, v_model: torch.Tensor) -> torch.Tensor:
    """mean F(data) - mean F(model samples): its gradient is the (modified) CD update for every
    parameter, variances included (samples are treated as constants)."""
    return grbm_free_energy(m, v_data).mean() - grbm_free_energy(m, v_model.detach()).mean()


# --- deep belief nets -------------------------------------------------------------------------
def layer_input(rbm: RBM, x: torch.Tensor, mode: Literal["means", "samples"],
                g: Rng = None, dtype: str = "float32",
                batch_size: int = 10000) -> torch.Tensor:
    """What the next layer of a greedy stack is trained on: E[h|x] ("means") or a binary sample
    of h given x ("samples")."""
    out = torch.cat([hidden_mean(rbm, hidden_input(rbm, x[i:i + batch_size], dtype))
                     for i in range(0, x.shape[0], batch_size)])
    return out if mode == "means" else bernoulli(out, g)


def greedy_stack(x: torch.Tensor, widths: list[int], train_layer: Callable[[RBM, torch.Tensor,
                 int], Any], mode: Literal["means", "samples"] = "means", seed: int = 0,
                 top_labels: torch.Tensor | None = None, dtype: str = "float32") -> list[RBM]:
    """Greedy layer-wise learning (Hinton, Osindero & Teh 2006): train an RBM on x, then the next
    on its posterior (means or samples), and so on; the top RBM also gets `top_labels` (one-hot)
    as softmax visible units. `train_layer(rbm, inputs, layer_index)` trains one RBM in place."""
    g = torch.Generator(device=x.device).manual_seed(seed + 12345)
    rbms, inputs, dims = [], x, [x.shape[1], *widths]
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        top = i == len(widths) - 1 and top_labels is not None
        n_lab = top_labels.shape[1] if top else 0
        rbm = RBM.init(d_in + n_lab, d_out, seed + i, n_softmax=n_lab).to(x.device)
        train_layer(rbm, inputs, i)
        rbms.append(rbm)
        if i < len(widths) - 1:
            inputs = layer_input(rbm, inputs, mode, g, dtype)
    return rbms


@dataclass
class DBN:
    """A deep belief net: directed lower layers with separate recognition (up) and generative
    (down) weights, and an undirected top RBM whose visible units are the penultimate layer plus
    the label softmax."""

    rec: list[tuple[torch.Tensor, torch.Tensor]]  # (w (d_in, d_out), hidden bias c)
    gen: list[tuple[torch.Tensor, torch.Tensor]]  # (w (d_in, d_out), visible bias b)
    top: RBM

    @classmethod
    def from_stack(cls, rbms: list[RBM]) -> DBN:
        """Untie the greedy stack: recognition and generative weights both start as the RBMs'."""
        lower = rbms[:-1]
        return cls([(r.w.clone(), r.c.clone()) for r in lower],
                   [(r.w.clone(), r.b.clone()) for r in lower],
                   RBM(rbms[-1].w.clone(), rbms[-1].b.clone(), rbms[-1].c.clone(),
                       n_softmax=rbms[-1].n_softmax))

    def state(self) -> dict[str, Any]:
        """All weights, for checkpoints."""
        return {"rec": [list(p) for p in self.rec], "gen": [list(p) for p in self.gen],
                "top": self.top.state()}

    def load(self, s: dict[str, Any]) -> DBN:
        """Set the weights from `state()`."""
        self.rec = [(w.float(), c.float()) for w, c in s["rec"]]
        self.gen = [(w.float(), b.float()) for w, b in s["gen"]]
        self.top.load(s["top"])
        return self


def dbn_up(dbn: DBN, v: torch.Tensor, dtype: str = "float32") -> list[torch.Tensor]:
    """Recognition probabilities of every lower layer, bottom to top (deterministic up-pass)."""
    out, x = [], v
    for w, c in dbn.rec:
        x = torch.sigmoid(mm(x, w, dtype) + c)
        out.append(x)
    return out


def label_free_energies(top: RBM, pen: torch.Tensor) -> torch.Tensor:
    """Free energy of the top RBM with the penultimate state `pen` and each label switched on in
    turn: (batch, n_labels). The most probable label has the lowest free energy."""
    k = top.n_softmax
    w_pen, w_lab = top.w[:-k], top.w[-k:]
    x = (pen @ w_pen + top.c).unsqueeze(1) + w_lab.unsqueeze(0)  # (batch, labels, hidden)
    return -(pen @ top.b[:-k]).unsqueeze(1) - top.b[-k:] - F.softplus(x).sum(2)


def dbn_predict(dbn: DBN, v: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Labels of the rows of v: the up-pass, then the label with the lowest free energy."""
    return torch.cat([label_free_energies(dbn.top, dbn_up(dbn, v[i:i + batch_size])[-1])
                      .argmin(1) for i in range(0, v.shape[0], batch_size)])


def updown_step(dbn: DBN, v: torch.Tensor, y: torch.Tensor, k: int, lr: float,
                g: Rng = None, dtype: str = "float32",
                weight_decay: float = 0.0, momentum: float = 0.0,
                velocity: dict[str, torch.Tensor] | None = None) -> None:
    """One update of the up-down (contrastive wake-sleep) algorithm on the batch (v, one-hot y).

    Wake: sample the layers bottom-up with the recognition weights; generative weights learn
    to predict each layer from the one above. Top: CD-k in the top RBM from the wake state.
    Sleep: from the top RBM's negative sample, generate downwards; recognition weights learn to
    predict each layer from the one below. With `velocity` (a dict the step fills and keeps
    across steps), each update is smoothed as in the RBMs' training: vel = momentum vel +
    (stat - weight_decay w), w += lr vel. Without it: w += lr (stat - weight_decay w)."""
    n = v.shape[0]
    low = (lambda w: w) if dtype == "float32" else (lambda w: w.to(DTYPES[dtype]))
    rec = [(low(w), c) for w, c in dbn.rec]  # cast once per step, used twice each
    gen = [(low(w), b) for w, b in dbn.gen]
    wake = [v]
    for w, c in rec:
        wake.append(bernoulli(torch.sigmoid(mm(wake[-1], w, dtype) + c), g))
    top_v = torch.cat([wake[-1], y], 1)
    grads, _, neg = cd_gradient(dbn.top, top_v, k, None, g, dtype)
    sleep = [neg[:, :-dbn.top.n_softmax]]
    for w, b in reversed(gen):
        sleep.insert(0, bernoulli(torch.sigmoid(mm(sleep[0], w.T, dtype) + b), g))
    # Every update is computed from the weights before this step; data parallel (a ShardRNG):
    # the batch statistics are averaged across processes first, in one all-reduce.
    stats = {"top." + key: t for key, t in grads.items()}
    for i, (w, b) in enumerate(gen):  # wake phase: generative weights
        err = wake[i] - torch.sigmoid(mm(wake[i + 1], w.T, dtype) + b)
        stats[f"gen{i}.w"], stats[f"gen{i}.b"] = mm(err.T, wake[i + 1], dtype).div_(n), err.mean(0)
    for i, (w, c) in enumerate(rec):  # sleep phase: recognition weights
        d = sleep[i + 1] - torch.sigmoid(mm(sleep[i], w, dtype) + c)
        stats[f"rec{i}.w"], stats[f"rec{i}.c"] = mm(sleep[i].T, d, dtype).div_(n), d.mean(0)
    if isinstance(g, ShardRNG):
        stats = average_over_processes(stats)
    params = updown_params(dbn)
    if velocity is None:
        decay = 1 - lr * weight_decay  # w += lr (stat - weight_decay w): two in-place passes
        for key, p in params.items():
            (p.mul_(decay) if key.endswith(".w") else p).add_(stats[key], alpha=lr)
        return
    for key, p in params.items():
        s = stats[key]
        if key.endswith(".w") and weight_decay:
            s.sub_(p, alpha=weight_decay)
        if key in velocity:
            s = velocity[key].mul_(momentum).add_(s)
        velocity[key] = s
        p.add_(s, alpha=lr)


def updown_params(dbn: DBN) -> dict[str, torch.Tensor]:
    """The DBN's weights and biases by the names updown_step gives their statistics
    ("gen0.w", "rec1.c", "top.b", ...): weights end in ".w" and are the ones decayed."""
    out: dict[str, torch.Tensor] = {}
    for i, (w, b) in enumerate(dbn.gen):
        out[f"gen{i}.w"], out[f"gen{i}.b"] = w, b
    for i, (w, c) in enumerate(dbn.rec):
        out[f"rec{i}.w"], out[f"rec{i}.c"] = w, c
    top = dbn.top
    out["top.w"], out["top.b"], out["top.c"] = top.w, top.b, top.c
    return out


def to_mlp(dbn: DBN) -> nn.Sequential:
    """The DBN's recognition path as a feed-forward sigmoid net ending in a linear label layer:
    lower layers, then the top RBM's hidden layer (from the penultimate units), then the top
    hidden-to-label weights. Backprop fine-tuning starts from this net."""
    layers: list[nn.Module] = []
    for w, c in dbn.rec:
        lin = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(w.T)
            lin.bias.copy_(c)
        layers += [lin, nn.Sigmoid()]
    k = dbn.top.n_softmax
    hid = nn.Linear(dbn.top.n_vis - k, dbn.top.n_hid)
    out = nn.Linear(dbn.top.n_hid, k)
    with torch.no_grad():
        hid.weight.copy_(dbn.top.w[:-k].T)
        hid.bias.copy_(dbn.top.c)
        out.weight.copy_(dbn.top.w[-k:])
        out.bias.copy_(dbn.top.b[-k:])
    return nn.Sequential(*layers, hid, nn.Sigmoid(), out)


@dataclass
class UpDownTraining:
    """Settings of up-down fine-tuning: epochs split into equal phases, one per entry of
    `k_schedule` (Hinton, Osindero & Teh 2006 used CD-3, then 6, then 10 in the top RBM)."""

    epochs: int = 300
    batch_size: int = 100
    lr: float = 0.01
    weight_decay: float = 1e-5
    # dbn-mnist's measured defaults: 1.41 % against 1.62 % for plain SGD (momentum 0, constant
    # rate) after 300 epochs (docs/boltzmann.md, 2026-12-06)
    momentum: float = 0.9  # 0: plain SGD (no velocity kept)
    lr_decay: Literal["constant", "linear"] = "linear"  # linear: lr -> 0 over the run
    k_schedule: tuple[int, ...] = (3, 6, 10)
    dtype: str = "auto"  # "auto": bf16 where the matmul unit has it (loop.resolve_dtype)
    seed: int = 0

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype)

    def k_at(self, epoch: int) -> int:
        """Gibbs steps in the top RBM at `epoch` (0-based)."""
        phase = min(epoch * len(self.k_schedule) // max(self.epochs, 1), len(self.k_schedule) - 1)
        return self.k_schedule[phase]


def train_updown(dbn: DBN, x: torch.Tensor, y_onehot: torch.Tensor, cfg: UpDownTraining,
                 run: Run, evaluate: Callable[[DBN], dict[str, float]] | None = None,
                 eval_every: int = 1, progress: bool = False) -> dict[str, float]:
    """Fine-tune `dbn` by the up-down algorithm, one checkpoint per epoch (resumable); logs
    `evaluate(dbn)` every `eval_every` epochs and after the last."""
    n = x.shape[0]
    steps = n // cfg.batch_size
    g = torch.Generator(device=x.device).manual_seed(cfg.seed + 777)
    dp = distributed.data_parallel()  # as train_rbm: rows of the global batch, averaged updates
    rng: Rng = ShardRNG(g, distributed.rank(), distributed.world()) if dp else g
    start, state = run.resume_state()
    velocity: dict[str, torch.Tensor] | None = {} if cfg.momentum > 0 else None
    if state is not None:
        dbn.load(state["dbn"])
        g.set_state(state["gen"])
        if velocity is not None:
            velocity = {k: v.float().to(x.device) for k, v in state["velocity"].items()}
    scores: dict[str, float] = {}
    for epoch in range(start, cfg.epochs):
        k = cfg.k_at(epoch)
        with run.timed():
            order = epoch_order(n, cfg.seed + 31, epoch, x.device)
            for i in range(steps):
                idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                idx = distributed.shard(idx) if dp else idx
                lr = decayed_lr(cfg.lr, cfg.lr_decay, epoch * steps + i, cfg.epochs * steps)
                updown_step(dbn, x[idx], y_onehot[idx], k, lr, rng, cfg.dtype,
                            cfg.weight_decay, cfg.momentum, velocity)
        check_finite({"top.w": dbn.top.w, **{f"rec{i}.w": w for i, (w, _) in
                                             enumerate(dbn.rec)}}, epoch, "up-down")
        row: dict[str, Any] = {"epoch": epoch + 1, "updown_k": k}
        if evaluate is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == cfg.epochs):
            scores = distributed.from_main(lambda: evaluate(dbn))
            row.update(scores)
        run.log(**row, seconds=run.train_seconds)
        run.save(epoch + 1, {"dbn": dbn.state(), "gen": g.get_state(),
                             **({"velocity": velocity} if velocity is not None else {})})
        if progress:
            print(f"up-down epoch {epoch + 1}/{cfg.epochs} (k={k}): {scores} "
                  f"({run.train_seconds:.0f} s)", flush=True)
    return scores
