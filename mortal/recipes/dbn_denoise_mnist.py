"""dbn-denoise-mnist: clean up corrupted digits with the joint image-label model of a DBN by
shifting weight from bottom-up to top-down input, the demonstration in Hinton's 2015 lecture.

A test image is corrupted with structured noise (random strokes, a few pixels thick, that look
like pen marks). Inference starts bottom-up; then, over `steps` steps, each hidden layer's input
becomes (1 - a) * bottom-up + a * top-down with a rising from 0 to `alpha_max` (the two weights
always sum to one). Top-down input to a layer comes from the layer above through the generative
weights (and, for the penultimate layer, from the top RBM's hidden units, which also drive the
label units). The image the model "sees" is the top-down reconstruction from the first hidden
layer. Reported against noise level: label accuracy and reconstruction error (squared error to
the clean image) for pure bottom-up inference and after the blend. There is no published number;
test_error_pct is the label error after blending at the highest noise level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mortal.config import check
from mortal.loop import device_of, seed_everything
from mortal.recipes import Recipe, register
from mortal.recipes import dbn_mnist as dbnr
from mortal.recipes.common import load_split, standard_results
from mortal.rules import boltzmann as bz
from mortal.runs import checkpoint as ckpt
from mortal.runs.report import figure


@dataclass
class Config:
    """A DBN (from a dbn-mnist run's dbn.safetensors, or trained greedily here), strokes as
    noise, 20 blending steps up to a = 0.8."""

    dataset: str = "mnist"
    data_root: str = ""
    dbn_from: str = ""  # a dbn-mnist run directory (or its dbn.safetensors); else train here
    widths: tuple[int, ...] = (500, 500, 2000)
    greedy_epochs: int = 30
    noise: Literal["strokes", "blocks"] = "strokes"
    noise_levels: tuple[int, ...] = (0, 1, 2, 4, 8)
    stroke_width: int = 2
    show_noise: int = -1  # the noise level drawn as PNG frames; -1: the highest
    steps: int = 20
    alpha_max: float = 0.8
    n_test: int = 10000
    n_show: int = 8
    dtype: Literal["bfloat16", "float32"] = "float32"
    device: str = "auto"
    seed: int = 0
    train_limit: int = 0

    @property
    def epochs(self) -> int:
        """Greedy epochs of the DBN trained here (0 when loaded)."""
        return 0 if self.dbn_from else self.greedy_epochs

    def validate(self) -> list[str]:
        p: list[str] = []
        check(0 < self.alpha_max <= 1, "alpha_max must be in (0, 1]", p)
        check(self.steps >= 2, "steps must be >= 2", p)
        check(len(self.noise_levels) >= 1 and min(self.noise_levels) >= 0,
              "noise_levels must be counts >= 0", p)
        check(self.stroke_width >= 1 and self.n_test >= 1 and self.n_show >= 1,
              "stroke_width, n_test and n_show must be >= 1", p)
        check(self.greedy_epochs >= 1 and self.train_limit >= 0, "bad greedy_epochs/limit", p)
        check(self.show_noise < 0 or self.show_noise in self.noise_levels,
              "show_noise must be -1 or one of noise_levels", p)
        return p


def corrupt(x: torch.Tensor, n: int, kind: str, width: int, g: torch.Generator,
            side: int = 28) -> torch.Tensor:
    """Add `n` random strokes (lines `width` pixels thick, ink 1) or `n` random 6x6 blocks to
    each image of x (batch, side*side)."""
    if n == 0:
        return x.clone()
    b = x.shape[0]
    img = x.reshape(b, side, side).clone()
    yy, xx = torch.meshgrid(torch.arange(side, device=x.device),
                            torch.arange(side, device=x.device), indexing="ij")
    for _ in range(n):
        p = torch.rand(b, 4, generator=g, device=x.device) * (side - 1)
        if kind == "blocks":
            r, c = p[:, 0, None, None] * (side - 6) / side, p[:, 1, None, None] * (side - 6) / side
            mask = (yy >= r) & (yy < r + 6) & (xx >= c) & (xx < c + 6)
        else:  # distance of each pixel to the segment p0-p1 below width / 2
            y0, x0, y1, x1 = (p[:, i, None, None] for i in range(4))
            dy, dx = y1 - y0, x1 - x0
            t = (((yy - y0) * dy + (xx - x0) * dx) / (dy**2 + dx**2 + 1e-6)).clamp(0, 1)
            mask = (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2 <= (width / 2) ** 2
        img = torch.where(mask, torch.ones_like(img), img)
    return img.reshape(b, -1)


@torch.no_grad()
def blend_infer(dbn: bz.DBN, v: torch.Tensor, alphas: list[float]
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mean-field inference with the bottom-up/top-down blend a for each entry of `alphas`:
    (cleaned image, label probabilities) after each step. Works for any number of lower layers."""
    top, k = dbn.top, dbn.top.n_softmax
    w_pen, w_lab, b_pen, b_lab = top.w[:-k], top.w[-k:], top.b[:-k], top.b[-k:]
    ups = bz.dbn_up(dbn, v)  # bottom-up start
    lab = torch.softmax(-bz.label_free_energies(top, ups[-1]), 1)
    out = []
    for a in alphas:
        t = torch.sigmoid(ups[-1] @ w_pen + lab @ w_lab + top.c)
        lab = torch.softmax(t @ w_lab.T + b_lab, 1)
        below = v
        new = []
        for i, (w, c) in enumerate(dbn.rec):
            bottom_up = below @ w + c
            if i == len(dbn.rec) - 1:
                top_down = t @ w_pen.T + b_pen
            else:
                gw, gb = dbn.gen[i + 1]
                top_down = ups[i + 1] @ gw.T + gb
            h = torch.sigmoid((1 - a) * bottom_up + a * top_down)
            new.append(h)
            below = h
        ups = new
        gw, gb = dbn.gen[0]
        out.append((torch.sigmoid(ups[0] @ gw.T + gb), lab))
    return out


def load_dbn(path: str, device: torch.device) -> bz.DBN:
    """The DBN a dbn-mnist run saved (dbn.safetensors in its run directory)."""
    p = Path(path)
    p = p / "dbn.safetensors" if p.is_dir() else p
    if not p.exists():
        from mortal.config import ConfigError
        raise ConfigError(f"dbn_from: {p} does not exist; give a finished dbn-mnist run directory")
    s = ckpt.load(p)["dbn"]
    dbn = bz.DBN([], [], bz.RBM(s["top"]["w"], s["top"]["b"], s["top"]["c"], n_softmax=10))
    dbn.load(s)
    dbn.rec = [(w.to(device), c.to(device)) for w, c in dbn.rec]
    dbn.gen = [(w.to(device), b.to(device)) for w, b in dbn.gen]
    dbn.top.to(device)
    return dbn


def frames(path_stem: Path, noisy: torch.Tensor, clean: torch.Tensor,
           seq: list[tuple[torch.Tensor, torch.Tensor]], alphas: list[float]) -> list[str]:
    """One PNG per blending step: the clean and corrupted digits, then the model's image with its
    inferred label; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    n = noisy.shape[0]
    for s, ((img, lab), a) in enumerate(zip(seq, alphas, strict=True)):
        fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 4.0), dpi=80)
        for j in range(n):
            for r, (im, title) in enumerate([(clean[j], "clean"), (noisy[j], "corrupted"),
                                             (img[j], f"label {int(lab[j].argmax())}")]):
                ax = axes[r, j]
                ax.imshow(im.reshape(28, 28).cpu(), cmap="gray", vmin=0, vmax=1)
                ax.set_title(title, fontsize=8)
                ax.axis("off")
        fig.suptitle(f"step {s + 1}: top-down weight a = {a:.2f}", fontsize=9)
        fig.tight_layout()
        name = f"{path_stem.name}_{s:02d}.png"
        fig.savefig(path_stem.parent / name)
        plt.close(fig)
        names.append(name)
    return names


def train(cfg: Config, run: Any) -> dict[str, Any]:
    """Load or train the DBN; for each noise level, infer with the blend; curves, PNG frames."""
    seed_everything(cfg.seed)
    device = device_of(cfg.device)
    data = load_split(cfg.dataset, cfg.data_root, device, cfg.train_limit)
    if cfg.dbn_from:
        dbn = load_dbn(cfg.dbn_from, device)
    else:
        dcfg = dbnr.Config(dataset=cfg.dataset, widths=cfg.widths,
                           greedy_epochs=cfg.greedy_epochs, seed=cfg.seed)
        y1h = torch.eye(10, device=device)[data.y_train]
        dbn = bz.DBN.from_stack(dbnr.greedy(dcfg, run, data.x_train, y1h))
        run.train_seconds = run.stages_seconds()
    x, y = data.x_test[:cfg.n_test], data.y_test[:cfg.n_test]
    alphas = [cfg.alpha_max * i / (cfg.steps - 1) for i in range(cfg.steps)]
    g = torch.Generator(device=device).manual_seed(cfg.seed + 99)
    rows, shown = [], []
    for level in cfg.noise_levels:
        noisy = corrupt(x, level, cfg.noise, cfg.stroke_width, g)
        seq = blend_infer(dbn, noisy, alphas)
        first, last = seq[0], seq[-1]
        bottom_up = bz.dbn_predict(dbn, noisy)
        row = {"noise": level,
               "noisy_input_sq_error": float(((noisy - x) ** 2).sum(1).mean()),
               "bottom_up_accuracy_pct": 100 * float((bottom_up == y).float().mean()),
               "blend_accuracy_pct": 100 * float((last[1].argmax(1) == y).float().mean()),
               "bottom_up_recon_sq_error": float(((first[0] - x) ** 2).sum(1).mean()),
               "blend_recon_sq_error": float(((last[0] - x) ** 2).sum(1).mean())}
        rows.append(row)
        run.log(**row)
        if level == (max(cfg.noise_levels) if cfg.show_noise < 0 else cfg.show_noise):
            shown = frames(run.dir / "denoise", noisy[:cfg.n_show], x[:cfg.n_show],
                           [(im[:cfg.n_show], lab[:cfg.n_show]) for im, lab in seq], alphas)
        if not run.quiet:
            print(row, flush=True)
    levels = [r["noise"] for r in rows]
    with figure(run.dir / "accuracy_vs_noise.png", "strokes added", "label accuracy (%)") as ax:
        ax.plot(levels, [r["bottom_up_accuracy_pct"] for r in rows], marker="o",
                label="bottom-up only")
        ax.plot(levels, [r["blend_accuracy_pct"] for r in rows], marker="o",
                label=f"blended to a = {cfg.alpha_max:g}")
    with figure(run.dir / "recon_vs_noise.png", "strokes added",
                "squared error to the clean image") as ax:
        ax.plot(levels, [r["noisy_input_sq_error"] for r in rows], marker="o",
                label="corrupted input")
        ax.plot(levels, [r["bottom_up_recon_sq_error"] for r in rows], marker="o",
                label="reconstruction, bottom-up")
        ax.plot(levels, [r["blend_recon_sq_error"] for r in rows], marker="o",
                label=f"reconstruction, blended to a = {cfg.alpha_max:g}")
    lines = ["| strokes | input sq. error | accuracy bottom-up (%) | accuracy blended (%) | "
             "recon sq. error bottom-up | recon sq. error blended |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['noise']} | {r['noisy_input_sq_error']:.1f} | "
              f"{r['bottom_up_accuracy_pct']:.2f} | {r['blend_accuracy_pct']:.2f} | "
              f"{r['bottom_up_recon_sq_error']:.1f} | {r['blend_recon_sq_error']:.1f} |"
              for r in rows]
    (run.dir / "table.md").write_text("\n".join(lines) + "\n")
    worst = rows[-1] if rows[-1]["noise"] == max(levels) else max(rows, key=lambda r: r["noise"])
    mid = shown[len(shown) // 2] if shown else None
    figs = ["accuracy_vs_noise.png", "recon_vs_noise.png"]
    figs += shown[:1] + ([mid] if mid else []) + shown[-1:]
    return standard_results(
        RECIPE, cfg, run, len(data.x_train) if not cfg.dbn_from else 0,
        100 - worst["blend_accuracy_pct"],
        test_error_note=f"test_error_pct is the label error after blending at {worst['noise']} "
                        "strokes; no published number",
        noise_sweep=rows, frames=shown, dbn_from=cfg.dbn_from or None,
        n_test=len(x), figures=figs, dtype=cfg.dtype,
        blend_alphas=[round(a, 3) for a in alphas],
    )


RECIPE = register(Recipe(
    name="dbn-denoise-mnist",
    paper="Hinton 2015 lecture (seeds/002): denoising by shifting bottom-up to top-down input; "
          "the DBN of Hinton, Osindero & Teh 2006",
    setting="MNIST test digits + random strokes; blend a: 0 -> 0.8 over 20 steps",
    dataset="mnist",
    paper_test_error_pct=None,
    config=Config,
    train=train,
))
