"""rbm-mnist: a binary RBM with 500 hidden units on binarised MNIST, trained by CD-k or persistent
CD, scored by its AIS test log-likelihood in nats.

Anchor: Salakhutdinov & Murray (2008), "On the Quantitative Analysis of Deep Belief Networks"
(ICML), results table: RBMs with 500 hidden units on binarised MNIST, estimated average test
log-probabilities CD1(500) -125.53, CD3(500) -105.50, CD25(500) -86.34 nats (CD25: the number of
Gibbs steps grown gradually from 1 to 25 during training). Their AIS: 100 runs, 14,500
intermediate distributions (beta spaced 1e-3 on [0, 0.5], 1e-4 on [0.5, 0.9], 1e-5 on [0.9, 1];
the schedule is also in the authors' released Matlab code), a base-rate RBM whose visible biases
match the training data's pixel marginals. The data: each pixel set to 1 with probability equal
to its grey level, once (the stochastic binarisation of their released data, later used by
Larochelle & Murray 2011). Training settings the paper's text does not give (learning rate,
momentum, weight cost, epochs) are those of Hinton & Salakhutdinov's released rbm.m; see
docs/boltzmann.md. `--set k=3` or `--set k=1 k_end=25` selects the other anchors;
`--set persistent=true` trains by PCD (Tieleman 2008). With rbm.m's constant rate CD-1 matches
its anchor (-126.6 nats) and CD-25 misses by 30; with `--set lr=0.05 --set lr_decay=linear`
(the rate annealed to 0) CD-25 matches its anchor (-86.0) and CD-1 / CD-3 beat theirs by 9-10
nats (docs/boltzmann.md, 2026-12-06).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mortal import distributed
from mortal.config import ConfigError, check
from mortal.loop import device_of, resolve_dtype, seed_everything
from mortal.recipes import Recipe, register
from mortal.recipes.common import load_split, standard_results
from mortal.rules import boltzmann as bz
from mortal.rules import ff
from mortal.rules.backprop import Split
from mortal.runs import checkpoint as ckpt

# Salakhutdinov & Murray 2008, results table (500 hidden units), keyed by (k, k_end).
PAPER_NATS = {(1, 0): -125.53, (3, 0): -105.50, (1, 25): -86.34}


@dataclass
class Config:
    """500 hidden units, CD-1, batches of 100; `k_end` > k grows k during training."""

    dataset: str = "mnist"
    data_root: str = ""
    binarize: Literal["stochastic", "threshold"] = "stochastic"
    n_hidden: int = 500
    hidden: Literal["binary", "nrelu"] = "binary"
    epochs: int = 50
    batch_size: int = 100
    lr: float = 0.1
    momentum_start: float = 0.5
    momentum_end: float = 0.9
    momentum_switch_epoch: int = 5
    weight_decay: float = 2e-4
    k: int = 1
    k_end: int = 0
    persistent: bool = False
    lr_decay: Literal["constant", "linear"] = "constant"  # linear: lr -> 0 over the run
    # a finished rbm-mnist run directory whose final RBM starts this one (fresh momentum), e.g.
    # CD-25 continued from a CD-3 model; the data (seed, binarize) must be the same
    init_from: str = ""
    ais_runs: int = 100
    ais_betas: tuple[int, int, int] = (500, 4000, 10000)
    # AIS from each base model; log Z is the largest estimate (each errs low: see docs)
    ais_bases: tuple[str, ...] = ("base_rate", "uniform")
    sample_steps: int = 1000
    readout_epochs: int = 20
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bf16 if native
    device: str = "auto"
    seed: int = 0
    train_limit: int = 0

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype, self.device)

    def validate(self) -> list[str]:
        p: list[str] = []
        check(self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1", p)
        check(self.n_hidden >= 1, "n_hidden must be >= 1", p)
        check(self.k >= 1, "k must be >= 1 (Gibbs steps of the negative phase)", p)
        check(self.k_end == 0 or self.k_end >= self.k, "k_end must be 0 or >= k", p)
        check(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0, weight_decay >= 0", p)
        check(0 <= self.momentum_start < 1 and 0 <= self.momentum_end < 1,
              "momenta must be in [0, 1)", p)
        check(self.ais_runs >= 2, "ais_runs must be >= 2 (the error bar needs two)", p)
        check(len(self.ais_betas) == 3 and min(self.ais_betas) >= 1,
              "ais_betas is three counts >= 1 (on [0,.5), [.5,.9), [.9,1])", p)
        check(len(self.ais_bases) >= 1 and set(self.ais_bases) <= {"base_rate", "uniform"},
              "ais_bases: one or both of base_rate, uniform (the AIS starting models)", p)
        check(self.train_limit >= 0 and self.sample_steps >= 0, "limits must be >= 0", p)
        check(self.lr_decay in ("constant", "linear"), "lr_decay: constant or linear", p)
        check(not self.init_from or (Path(self.init_from) / "checkpoint.safetensors").is_file(),
              "init_from: a run directory holding checkpoint.safetensors", p)
        return p


def binarized(cfg: Any, device: torch.device) -> Split:
    """The dataset with pixels made binary: once, with a fixed seed (stochastic), or at 0.5."""
    data = load_split(cfg.dataset, cfg.data_root, device, cfg.train_limit)
    g = torch.Generator(device=device).manual_seed(cfg.seed + 2008)

    def b(x: torch.Tensor) -> torch.Tensor:
        return bz.bernoulli(x, g) if cfg.binarize == "stochastic" else (x > 0.5).float()

    return Split(b(data.x_train), data.y_train, b(data.x_test), data.y_test)


def save_grid(path: str | Path, images: torch.Tensor, ncol: int = 10, side: int = 28,
              scale: int = 2) -> None:
    """Rows of `images` (n, side*side) in [0, 1] as one PNG grid with 1-pixel gaps."""
    from PIL import Image

    x = images.detach().float().clamp(0, 1).cpu().numpy().reshape(-1, side, side)
    nrow = math.ceil(len(x) / ncol)
    grid = np.ones((nrow * (side + 1) + 1, ncol * (side + 1) + 1), dtype=np.float32)
    for i, im in enumerate(x):
        r, c = divmod(i, ncol)
        grid[1 + r * (side + 1):1 + r * (side + 1) + side,
             1 + c * (side + 1):1 + c * (side + 1) + side] = im
    img = Image.fromarray((grid * 255).astype(np.uint8))
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def readout_error(feats_train: torch.Tensor, y_train: torch.Tensor, feats_test: torch.Tensor,
                  y_test: torch.Tensor, epochs: int, seed: int) -> float:
    """Test error (%) of a linear softmax readout trained on frozen features."""
    head = ff.train_softmax(feats_train, y_train, epochs=epochs, seed=seed)
    return ff.error_pct(ff.softmax_predict(head, feats_test), y_test)


def start_weights(run_dir: str | Path, like: bz.RBM, option: str = "init_from"
                  ) -> dict[str, torch.Tensor]:
    """The final RBM weights of a finished RBM training (an rbm-mnist run, or a greedy stage
    of dbn-mnist), checked against `like`'s shapes; errors name the config `option`."""
    state = ckpt.load(Path(run_dir) / "checkpoint.safetensors")["state"]["rbm"]
    for k, v in like.state().items():
        if k not in state or state[k].shape != v.shape:
            got = tuple(state[k].shape) if k in state else "missing"
            raise ConfigError(f"{option} {run_dir}: {k} has shape {got}, this run needs "
                              f"{tuple(v.shape)}")
    return {k: v.to(like.w.device) for k, v in state.items()}


def rbm_training(cfg: Config) -> bz.RBMTraining:
    """The training-loop settings of this recipe."""
    return bz.RBMTraining(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        momentum_start=cfg.momentum_start, momentum_end=cfg.momentum_end,
        momentum_switch_epoch=cfg.momentum_switch_epoch, weight_decay=cfg.weight_decay,
        k=cfg.k, k_end=cfg.k_end, persistent=cfg.persistent, lr_decay=cfg.lr_decay,
        dtype=cfg.dtype, seed=cfg.seed)


def train(cfg: Config, run: Any) -> dict[str, Any]:
    """Train the RBM, estimate log Z by AIS, report the test log-likelihood beside the paper's,
    draw samples, and score a linear readout of the hidden probabilities."""
    seed_everything(cfg.seed)
    device = device_of(cfg.device)
    data = binarized(cfg, device)
    base_b = bz.base_rate_bias(data.x_train)
    rbm = bz.RBM.init(data.x_train.shape[1], cfg.n_hidden, cfg.seed, b=base_b,
                      hidden=cfg.hidden).to(device)
    if cfg.init_from:
        rbm.load(start_weights(cfg.init_from, rbm))
    out = bz.train_rbm(rbm, data.x_train, rbm_training(cfg), run, progress=not run.quiet)
    # data parallel: rank 0 evaluates and writes; every process returns its results
    return distributed.from_main(lambda: report(cfg, run, rbm, data, base_b, out))


def report(cfg: Config, run: Any, rbm: bz.RBM, data: Split, base_b: torch.Tensor,
           out: dict[str, float]) -> dict[str, Any]:
    """AIS log-likelihoods beside the paper's, samples, filters, a readout, and the table."""
    device = rbm.w.device
    evals: dict[str, Any] = {}
    if cfg.hidden == "binary":  # AIS needs the closed-form free energy of binary hidden units
        # Each AIS estimate of log Z errs low (log of an unbiased estimate of Z), and one from
        # the base rate can miss a CD-1 model's spurious modes by ~20 nats (docs/boltzmann.md):
        # anneal from every base and keep the largest, the conservative likelihood.
        by_base = {name: bz.ais_log_z(rbm, base_b if name == "base_rate" else
                                      torch.zeros_like(base_b), bz.ais_betas(*cfg.ais_betas),
                                      cfg.ais_runs, cfg.seed + i)
                   for i, name in enumerate(cfg.ais_bases)}
        ais = max(by_base.values(), key=lambda r: r.log_z)
        ll_test = bz.mean_log_prob(rbm, data.x_test, ais.log_z)
        ll_train = bz.mean_log_prob(rbm, data.x_train, ais.log_z)
        # log p = -F - log Z: the +-3 s.e. interval of log Z maps to one on the likelihood
        # (None where mean(w) - 3 s.e. <= 0, i.e. the lower end is unbounded)
        def fin(x: float) -> float | None:
            return round(x, 4) if math.isfinite(x) else None

        evals = {"test_log_likelihood_nats": round(ll_test, 3),
                 "train_log_likelihood_nats": round(ll_train, 3),
                 "log_z": round(ais.log_z, 4),
                 "log_z_interval_3se": [fin(ais.log_z_low), fin(ais.log_z_high)],
                 "test_log_likelihood_interval_3se": [fin(ll_test + ais.log_z - ais.log_z_high),
                                                      fin(ll_test + ais.log_z - ais.log_z_low)],
                 "log_z_by_base": {k: round(r.log_z, 4) for k, r in by_base.items()},
                 "ais_runs": cfg.ais_runs, "ais_intermediate": sum(cfg.ais_betas)}
    # samples: 100 persistent chains started from test images, sample_steps Gibbs sweeps
    g = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    chain = bz.GibbsChain(data.x_test[:100].clone())
    p, _ = chain.run(rbm, cfg.sample_steps, g, "float32")
    save_grid(run.dir / "samples.png", p)
    save_grid(run.dir / "filters.png", _filters(rbm.w[:, :100].T))
    feats = [bz.hidden_mean(rbm, bz.hidden_input(rbm, x)) for x in (data.x_train, data.x_test)]
    err = readout_error(feats[0], data.y_train, feats[1], data.y_test, cfg.readout_epochs,
                        cfg.seed)
    key = (cfg.k, cfg.k_end)
    paper = (PAPER_NATS.get(key) if cfg.n_hidden == 500 and not cfg.persistent
             and not cfg.init_from else None)
    full = cfg.dataset == "mnist" and not cfg.train_limit
    setting = f"CD-{cfg.k}" + (f"->{cfg.k_end}" if cfg.k_end > cfg.k else "")
    setting = ("PCD-" + str(cfg.k)) if cfg.persistent else setting
    setting += f", lr {cfg.lr}" + (" -> 0" if cfg.lr_decay == "linear" else "")
    setting += f", from {Path(cfg.init_from).name}" if cfg.init_from else ""
    lines = ["| model | paper test log-likelihood (nats) | ours | ours, +-3 s.e. of log Z |",
             "|---|---|---|---|"]
    if evals:
        lo, hi = evals["test_log_likelihood_interval_3se"]
        lines.append(f"| RBM {cfg.n_hidden} hidden, {setting}, {cfg.epochs} epochs | "
                     f"{paper if paper is not None and full else 'n/a'} | "
                     f"{evals['test_log_likelihood_nats']:.2f} | [{lo}, {hi}] |")
        lines += ["", "AIS log Z by base model (the largest is used): " + ", ".join(
            f"{k} {v:.2f}" for k, v in evals["log_z_by_base"].items()) + "."]
    lines += ["", "Paper anchors (Salakhutdinov & Murray 2008, 500 hidden units): "
              "CD1 -125.53, CD3 -105.50, CD25 -86.34 nats.", "",
              f"Linear softmax readout of the hidden probabilities: {err:.2f} % test error."]
    (run.dir / "table.md").write_text("\n".join(lines) + "\n")
    return standard_results(
        RECIPE, cfg, run, len(data.x_train), err,
        test_error_note="test_error_pct is a linear readout of the RBM's hidden probabilities; "
                        "the RBM's own result is test_log_likelihood_nats",
        **evals, paper_test_log_likelihood_nats=paper if full else None,
        setting=setting, recon_error=round(out["recon_error"], 4),
        figures=["samples.png", "filters.png"], dtype=cfg.dtype,
    )


def _filters(w: torch.Tensor) -> torch.Tensor:
    """Each row of w rescaled to [0, 1], for display."""
    lo = w.min(1, keepdim=True).values
    hi = w.max(1, keepdim=True).values
    return (w - lo) / (hi - lo + 1e-8)


RECIPE = register(Recipe(
    name="rbm-mnist",
    paper="Salakhutdinov & Murray 2008, On the Quantitative Analysis of Deep Belief Networks",
    setting="binarised MNIST, RBM 784-500, CD-1 (k, k_end, persistent select CD3, CD25, PCD); "
            "AIS test log-likelihood (nats)",
    dataset="mnist",
    paper_test_error_pct=None,
    config=Config,
    train=train,
    notes="paper: CD1 -125.53, CD3 -105.50, CD25 -86.34 nats",
    before={"ais_bases": ("base_rate",)},  # one AIS start until 2026-11-25 (f03aa06)
))
