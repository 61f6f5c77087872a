"""grbm-mnist: a Gaussian-Bernoulli RBM with learned variances, trained by the modified CD of
Liao, Kornblith, Ren, Fleet & Hinton (2022), "Gaussian-Bernoulli RBMs Without Tears", and
sampled from noise with their Gibbs-Langevin sampler.

Modified CD: the negative chains start from Gaussian noise N(0, I) at every update (not at the
data) and run `cd_steps` Gibbs-Langevin steps, so the model learns to turn noise into digits in
that many steps; gradients are clipped (the paper's other ingredient). Samples are drawn the same
way: noise, `cd_steps` steps. Pixels are standardised by one global mean and standard deviation.
The paper reports samples and FID, no MNIST number we compare against; test_error_pct is a
linear readout of the hidden probabilities. `--set dataset=fashion_mnist` runs on Fashion-MNIST.
Sizes and step counts are sized for a 2-core CPU (docs/boltzmann.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from mortal.config import check
from mortal.loop import device_of, epoch_order, make_optimizer, resolve_dtype, seed_everything
from mortal.recipes import Recipe, register
from mortal.recipes.common import load_split, standard_results
from mortal.recipes.rbm_mnist import readout_error, save_grid
from mortal.rules import boltzmann as bz
from mortal.runs import check_finite


@dataclass
class Config:
    """GRBM 784-500, modified CD with 50 Gibbs-Langevin steps from noise, Adam, clipping."""

    dataset: str = "mnist"
    data_root: str = ""
    n_hidden: int = 500
    epochs: int = 5
    batch_size: int = 100
    lr: float = 1e-3
    clip: float = 10.0
    cd_steps: int = 50
    step_size: float = 0.5
    langevin_steps: int = 1
    init_var: float = 1.0
    sampler: Literal["gibbs_langevin", "gibbs"] = "gibbs_langevin"
    n_samples: int = 100
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
        check(self.cd_steps >= 1 and self.langevin_steps >= 1, "step counts must be >= 1", p)
        check(0 < self.step_size <= 1, "step_size must be in (0, 1] (a fraction of the variance)",
              p)
        check(self.lr > 0 and self.clip > 0 and self.init_var > 0,
              "lr, clip and init_var must be > 0", p)
        check(self.n_hidden >= 1 and self.n_samples >= 1, "sizes must be >= 1", p)
        check(self.train_limit >= 0, "train_limit must be >= 0", p)
        return p


def sample(m: bz.GRBM, cfg: Config, v: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Run the configured sampler for cfg.cd_steps steps from v."""
    if cfg.sampler == "gibbs":
        return bz.grbm_gibbs(m, v, cfg.cd_steps, g, cfg.dtype)
    return bz.gibbs_langevin(m, v, cfg.cd_steps, cfg.step_size, g, cfg.dtype, cfg.langevin_steps)


def train(cfg: Config, run: Any) -> dict[str, Any]:
    """Modified CD with autograd through the free energy; samples from noise; readout."""
    seed_everything(cfg.seed)
    device = device_of(cfg.device)
    data = load_split(cfg.dataset, cfg.data_root, device, cfg.train_limit)
    mean, std = float(data.x_train.mean()), float(data.x_train.std())
    x = (data.x_train - mean) / std
    m = bz.GRBM.init(x.shape[1], cfg.n_hidden, cfg.seed, var=cfg.init_var)
    m.mu = x.mean(0).clone()
    params = m.params()
    for p in params.values():
        p.requires_grad_(True)
    opt = make_optimizer("adam", list(params.values()), cfg.lr)
    g = torch.Generator(device=device).manual_seed(cfg.seed + 5)
    start, state = run.resume_state()
    if state is not None:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state["model"][k])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["gen"])
    n, steps = x.shape[0], x.shape[0] // cfg.batch_size
    for epoch in range(start, cfg.epochs):
        loss_sum = 0.0
        with run.timed():
            order = epoch_order(n, cfg.seed, epoch, device)
            for i in range(steps):
                v = x[order[i * cfg.batch_size:(i + 1) * cfg.batch_size]]
                with torch.no_grad():
                    neg = sample(m, cfg, torch.randn(v.shape, generator=g, device=device), g)
                loss = bz.grbm_cd_loss(m, v, neg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.clip)
                opt.step()
                with torch.no_grad():
                    m.log_var.clamp_(min=-8.0, max=4.0)
                loss_sum += float(loss.detach())
            check_finite({k: p for k, p in params.items()}, epoch, "the GRBM")
        row = {"epoch": epoch + 1, "cd_loss": loss_sum / steps,
               "mean_std": float((0.5 * m.log_var).exp().mean()), "seconds": run.train_seconds}
        run.log(**row)
        run.save(epoch + 1, {"model": {k: p.detach() for k, p in params.items()},
                             "optimizer": opt.state_dict(), "gen": g.get_state()})
        if not run.quiet:
            print(f"epoch {epoch + 1}/{cfg.epochs}: {row}", flush=True)
    with torch.no_grad():
        for p in params.values():
            p.requires_grad_(False)
        noise = torch.randn(cfg.n_samples, x.shape[1], generator=g, device=device)
        samples = sample(m, cfg, noise, g)
        # the last step's conditional mean is the sample without its pixel noise
        h = bz.bernoulli(bz.grbm_hidden_probs(m, samples), g)
        means = m.mu + h @ m.w.T
        save_grid(run.dir / "samples_from_noise.png", samples * std + mean)
        save_grid(run.dir / "sample_means_from_noise.png", means * std + mean)
        save_grid(run.dir / "data.png", data.x_train[:cfg.n_samples])
        feats = [bz.grbm_hidden_probs(m, (s - mean) / std) for s in (data.x_train, data.x_test)]
    err = readout_error(feats[0], data.y_train, feats[1], data.y_test, cfg.readout_epochs,
                        cfg.seed)
    (run.dir / "table.md").write_text(
        f"GRBM {cfg.n_hidden} hidden, modified CD-{cfg.cd_steps} ({cfg.sampler}), {cfg.epochs} "
        f"epochs on {cfg.dataset}. Linear readout of the hidden probabilities: {err:.2f} % test "
        "error. Samples: 100 chains from N(0, I) noise, "
        f"{cfg.cd_steps} steps (samples_from_noise.png; their conditional means in "
        "sample_means_from_noise.png; training images in data.png).\n")
    return standard_results(
        RECIPE, cfg, run, len(data.x_train), err,
        test_error_note="test_error_pct is a linear readout of the GRBM's hidden probabilities; "
                        "the recipe's result is its samples from noise",
        mean_std=round(float((0.5 * m.log_var).exp().mean()), 4),
        figures=["samples_from_noise.png", "sample_means_from_noise.png", "data.png"],
        dtype=cfg.dtype,
    )


RECIPE = register(Recipe(
    name="grbm-mnist",
    paper="Liao, Kornblith, Ren, Fleet & Hinton 2022, Gaussian-Bernoulli RBMs Without Tears",
    setting="MNIST (or --set dataset=fashion_mnist), GRBM 784-500 with learned variances, "
            "modified CD with Gibbs-Langevin from noise; samples from noise",
    dataset="mnist",
    paper_test_error_pct=None,
    config=Config,
    train=train,
))
