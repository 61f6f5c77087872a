"""distill-mnist: Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", §3.

Paper, on MNIST (test errors out of 10,000):
  teacher, 2x1200 ReLU, dropout + weight constraints, inputs jittered by up to 2 px   67
  student, 2x800 ReLU, no regularisation, trained alone on the hard labels          146
  the same student trained to match the teacher's soft targets at T = 20             74
Here the transfer set is the 60,000 unjittered training images (the paper does not say the
student saw jitter), and the teacher's logits on it are computed once and cached. A sweep of T
shows how much the temperature matters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

import mortal
from mortal.arch.dense import MLP
from mortal.config import check
from mortal.data.augment import jitter
from mortal.loop import device_of, resolve_dtype, seed_everything
from mortal.recipes import Recipe, register
from mortal.recipes.common import load_split, standard_results
from mortal.rules import backprop, distill
from mortal.rules.backprop import Split
from mortal.runs.report import figure

PAPER_ERRORS = {"teacher": 67, "student_alone": 146, "distilled": 74}


@dataclass
class Config:
    """The paper's nets; training settings are ours (the paper gives none). --set changes any."""

    dataset: str = "mnist"
    data_root: str = ""
    # teacher: 2x1200 ReLU, dropout (inputs and hidden), max-norm weight constraint, jitter
    teacher_widths: tuple[int, ...] = (1200, 1200)
    teacher_epochs: int = 100
    teacher_dropout: float = 0.5
    teacher_input_dropout: float = 0.2
    teacher_max_norm: float = 0.0
    jitter: int = 2
    teacher_cache: bool = True
    # student: 2x800 ReLU with no regularisation; `epochs` is its number of epochs
    student_widths: tuple[int, ...] = (800, 800)
    epochs: int = 60
    temperature: float = 20.0
    hard_weight: float = 0.1
    sweep_temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 20.0, 50.0)
    # optimisation, shared by all nets
    batch_size: int = 100
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bf16 if native
    device: str = "auto"
    seed: int = 0
    train_limit: int = 0

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype, self.device)

    def validate(self) -> list[str]:
        p: list[str] = []
        check(self.epochs >= 1 and self.teacher_epochs >= 1, "epochs must be >= 1", p)
        check(self.temperature > 0 and all(t > 0 for t in self.sweep_temperatures),
              "temperatures must be > 0", p)
        check(0 <= self.hard_weight <= 1, "hard_weight must be in [0, 1]", p)
        check(0 <= self.teacher_dropout < 1 and 0 <= self.teacher_input_dropout < 1,
              "dropout must be in [0, 1)", p)
        check(self.jitter >= 0, "jitter must be >= 0", p)
        check(self.batch_size >= 1 and self.lr > 0, "batch_size and lr must be positive", p)
        check(self.train_limit >= 0, "train_limit must be >= 0", p)
        return p


def errors(pct: float, n: int) -> int:
    """A test error percentage as a count of examples."""
    return round(pct * n / 100)


def fit(cfg: Any, run: Any, name: str, model: torch.nn.Module, data: Split, seed: int,
        epochs: int, **kw: Any) -> dict[str, Any]:
    """Train one net by backprop as stage `name` of the run (resumable) and record its result."""
    stage = run.stage(name)
    out = backprop.train(model, data, stage, epochs=epochs, batch_size=cfg.batch_size,
                         lr=cfg.lr, optimizer=cfg.optimizer, schedule=cfg.schedule,
                         dtype=cfg.dtype, seed=seed, progress=not run.quiet, **kw)
    out = stage.finish_stage({"stage": name, **out})
    if not run.quiet:
        print(f"{name}: test error {out['test_error_pct']:.2f} % "
              f"({out['train_seconds']:.0f} s)", flush=True)
    return out


def teacher(cfg: Config, run: Any, data: Split) -> dict[str, Any]:
    """Train the teacher (or take it from the cache): its weights, its logits on the training
    images (the transfer set), its test error and the time it took."""
    device = data.x_train.device

    def make() -> dict[str, Any]:
        seed_everything(cfg.seed)
        model = MLP(data.x_train.shape[1], cfg.teacher_widths, 10, cfg.teacher_dropout,
                    cfg.teacher_input_dropout).to(device)
        side = math.isqrt(data.x_train.shape[1])
        out = fit(cfg, run, "teacher", model, data, cfg.seed, cfg.teacher_epochs,
                  augment=lambda x: jitter(x, cfg.jitter, (1, side, side)),
                  max_norm=cfg.teacher_max_norm)
        return {"model": model.state_dict(),
                "logits_train": backprop.logits_of(model, data.x_train, cfg.dtype),
                "test_error_pct": out["test_error_pct"], "train_error_pct": out["train_error_pct"],
                "train_seconds": out["train_seconds"], "made_in": str(run.dir)}

    settings = {k: v for k, v in asdict(cfg).items() if k.startswith("teacher_")
                and k != "teacher_cache"}
    key = distill.cache_key(what="mnist-teacher", **settings, jitter=cfg.jitter,
                            batch_size=cfg.batch_size, lr=cfg.lr, optimizer=cfg.optimizer,
                            schedule=cfg.schedule, dtype=cfg.dtype, seed=cfg.seed,
                            dataset=cfg.dataset, train_limit=cfg.train_limit,
                            torch=torch.__version__.split("+")[0], mortal=mortal.__version__)
    value, path = distill.cached(key, make, use_cache=cfg.teacher_cache)
    value["cache"] = str(path) if path else None
    value["logits_train"] = value["logits_train"].to(device)
    return value


def student(cfg: Config, run: Any, name: str, data: Split, teacher_logits: torch.Tensor | None,
            temperature: float = 1.0, epochs: int | None = None) -> dict[str, Any]:
    """A 2x800 student trained alone (teacher_logits None) or by distillation at `temperature`.
    Every student starts from the same initial weights (seed + 1)."""
    seed_everything(cfg.seed + 1)
    model = MLP(data.x_train.shape[1], cfg.student_widths, 10).to(data.x_train.device)
    loss_fn = None
    if teacher_logits is not None:
        def loss_fn(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return distill.distill_loss(logits, teacher_logits[idx], temperature,
                                        data.y_train[idx], cfg.hard_weight)
    out = fit(cfg, run, name, model, data, cfg.seed + 1, epochs or cfg.epochs, loss_fn=loss_fn)
    out["model"] = model
    return out


def sweep_plot(path: Any, temps: list[float], errs: list[int], alone: int, teacher_err: int,
               paper: int | None) -> None:
    """Distilled student's test errors against T, with the student alone and the teacher."""
    with figure(path, "temperature T", "test errors (of 10,000)", xlog=True) as ax:
        ax.plot(temps, errs, marker="o", label="distilled student")
        ax.axhline(alone, color="C1", linestyle="--", label=f"student alone ({alone})")
        ax.axhline(teacher_err, color="C2", linestyle="--", label=f"teacher ({teacher_err})")
        if paper is not None:
            ax.axhline(paper, color="k", linestyle=":",
                       label=f"paper, distilled at T=20 ({paper})")


def train(cfg: Config, run: Any) -> dict[str, Any]:
    """Teacher, student alone, distilled student, then the sweep of T; table.md and a plot."""
    device = device_of(cfg.device)
    data = load_split(cfg.dataset, cfg.data_root, device, cfg.train_limit)
    n_test = len(data.x_test)
    t = teacher(cfg, run, data)
    alone = student(cfg, run, "student-alone", data, None)
    main = student(cfg, run, f"distilled-T{cfg.temperature:g}", data, t["logits_train"],
                   cfg.temperature)
    sweep: dict[float, dict[str, Any]] = {cfg.temperature: main}
    for temp in cfg.sweep_temperatures:
        if temp not in sweep:
            sweep[temp] = student(cfg, run, f"distilled-T{temp:g}", data, t["logits_train"], temp)
    run.train_seconds = (t["train_seconds"] + alone["train_seconds"]
                         + sum(s["train_seconds"] for s in sweep.values()))

    ours = {"teacher": errors(t["test_error_pct"], n_test),
            "student_alone": errors(alone["test_error_pct"], n_test),
            "distilled": errors(main["test_error_pct"], n_test)}
    full = not cfg.train_limit and cfg.dataset == "mnist"
    temps = sorted(sweep)
    lines = ["| model | paper test errors | ours | ours (%) |", "|---|---|---|---|"]
    label = {"teacher": "teacher 2x1200, dropout, jitter", "student_alone": "student 2x800 alone",
             "distilled": f"student 2x800 distilled at T={cfg.temperature:g}"}
    pct = {"teacher": t["test_error_pct"], "student_alone": alone["test_error_pct"],
           "distilled": main["test_error_pct"]}
    for k in ours:
        lines.append(f"| {label[k]} | {PAPER_ERRORS[k]} | {ours[k]} | {pct[k]:.2f} |")
    lines += ["", "Temperature sweep (distilled student, hard-label weight "
              f"{cfg.hard_weight:g}, {cfg.epochs} epochs):", "",
              "| T | test errors | train error (%) |", "|---|---|---|"]
    lines += [f"| {temp:g} | {errors(sweep[temp]['test_error_pct'], n_test)} | "
              f"{sweep[temp]['train_error_pct']:.2f} |" for temp in temps]
    (run.dir / "table.md").write_text("\n".join(lines) + "\n")
    sweep_plot(run.dir / "temperature_sweep.png", temps,
               [errors(sweep[temp]["test_error_pct"], n_test) for temp in temps],
               ours["student_alone"], ours["teacher"], PAPER_ERRORS["distilled"] if full else None)
    return standard_results(
        RECIPE, cfg, run, len(data.x_train), main["test_error_pct"],
        test_error_note="test_error_pct is the distilled student's",
        test_errors=ours, paper_test_errors=PAPER_ERRORS if full else None,
        teacher_test_error_pct=round(t["test_error_pct"], 4),
        teacher_train_seconds=round(t["train_seconds"], 2), teacher_cache=t["cache"],
        teacher_trained_in=t["made_in"],
        student_alone_test_error_pct=round(alone["test_error_pct"], 4),
        distilled_test_error_pct=round(main["test_error_pct"], 4),
        temperature_sweep={f"{temp:g}": errors(sweep[temp]["test_error_pct"], n_test)
                           for temp in temps},
        figures=["temperature_sweep.png"], dtype=cfg.dtype,
    )


RECIPE = register(Recipe(
    name="distill-mnist",
    paper="Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network, §3",
    setting="MNIST; teacher 2x1200 (dropout, jitter) -> student 2x800 at T=20; sweep of T",
    dataset="mnist",
    paper_test_error_pct=0.74,
    config=Config,
    train=train,
))
