"""mortal-device-mnist: learning in place on imperfect analog hardware (the 2022 interview's
"mortal computation"; the FF paper's argument that FF needs no model of its own forward pass).

Every hidden layer runs on a simulated device (`mortal.hardware`) whose imperfections are fixed
at manufacture and hidden from the learner; one `strength` scales them all. Four ways to end
up with a working device, at each strength:
  bp-deployed   backprop on an ideal digital model, weights then written to the device
  bp-in-loop    backprop with the device in the forward pass, ideal derivatives backward
  ff-deployed   FF on the ideal model, then written to the device
  ff-in-place   FF trained through the device: each layer sees its input and measured output
FF classifies by goodness with each label (everything on the device); backprop's final linear
readout stays digital (it is the same for every strength). The same device seeds are used by
every method, so each column meets the same hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from mortal import energy
from mortal.config import check
from mortal.data.negatives import embed_label, wrong_labels
from mortal.hardware import DeviceDense, Imperfections
from mortal.loop import autocast, device_of, seed_everything
from mortal.recipes import Recipe, register
from mortal.recipes import ff_supervised_mnist as sup
from mortal.recipes.common import load_split, standard_results
from mortal.rules import backprop, ff
from mortal.runs.report import figure

METHODS = ("bp-deployed", "bp-in-loop", "ff-deployed", "ff-in-place")


@dataclass
class Config(sup.Config):
    """ff-supervised-mnist's rule on a smaller net, the device family and the sweep."""

    widths: tuple[int, ...] = (1000, 1000, 1000)
    epochs: int = 20
    # ff-supervised-mnist's settings before 2026-12-01, with which this recipe's results were
    # measured (its own defaults have changed since)
    batch_size: int = 250
    lr: float = 4e-4
    temperature: float = 3.0
    input_dropout: float = 0.0
    softmax_lr: float = 1e-2
    hard_negatives_every: int = 1
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    device_seed: int = 1000
    bp_lr: float = 1e-3
    bp_batch_size: int = 100

    def validate(self) -> list[str]:
        p = super().validate()
        check(len(self.strengths) >= 1 and min(self.strengths) >= 0,
              "strengths must be >= 0", p)
        return p


def device_layers(cfg: Config, d_in: int, strength: float, act: str | None = None
                  ) -> list[DeviceDense]:
    """The hidden layers of one physical device: the same seeds for every method. FF uses
    the recipe's activation; backprop passes act="relu" (its true slope)."""
    dims = [d_in, *cfg.widths]
    return [DeviceDense(a, b, Imperfections().at(strength), seed=cfg.device_seed + i,
                        act=act or cfg.activation, init=cfg.init)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True))]


class DeviceMLP(nn.Module):
    """Hidden layers (on a device or ideal) and a digital linear readout, for backprop."""

    def __init__(self, layers: list[nn.Module], width: int, n_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def deploy(trained: nn.Module, target: nn.Module) -> nn.Module:
    """Write trained weights onto a device, then onto its conductance levels. Only the
    parameters move: the target keeps its own imperfections (manufacture buffers) and its own
    read-noise stream."""
    params = dict(trained.named_parameters())
    with torch.no_grad():
        for name, p in target.named_parameters():
            p.copy_(params[name])
    for m in target.modules():
        if hasattr(m, "constrain_"):
            m.constrain_()
    return target


def ff_error(net: ff.FFNet, data: Any) -> float:
    """Test error (%) of FF classification by goodness for each label."""
    return ff.error_pct(net.goodness_scores(data.x_test).argmax(1), data.y_test)


def train(cfg: Config, run: Any) -> dict[str, Any]:
    """Train the four methods (each resumable as a stage) and test them at every strength."""
    device = device_of(cfg.device)
    data = load_split(cfg.dataset, cfg.data_root, device, cfg.train_limit)
    d_in = data.x_train.shape[1]
    loop = replace(sup.training(cfg), eval_every=10**9)
    table: dict[str, dict[float, float]] = {m: {} for m in METHODS}

    def train_ff(name: str, strength: float) -> ff.FFNet:
        seed_everything(cfg.seed)
        net = ff.FFNet(device_layers(cfg, d_in, strength), sup.rule(cfg)).to(device)
        stage = run.stage(name)
        out = ff.train(net, data.x_train, data.y_train, data.x_test, data.y_test, loop, stage,
                       progress=not run.quiet)
        stage.finish_stage({"stage": name, **out})
        return net

    def train_bp(name: str, strength: float) -> DeviceMLP:
        seed_everything(cfg.seed)
        model = DeviceMLP(device_layers(cfg, d_in, strength, "relu"),
                          cfg.widths[-1]).to(device)
        stage = run.stage(name)
        out = backprop.train(model, data, stage, epochs=cfg.epochs,
                             batch_size=cfg.bp_batch_size, lr=cfg.bp_lr, dtype=cfg.dtype,
                             seed=cfg.seed, progress=not run.quiet)
        stage.finish_stage({"stage": name, **out})
        return model

    ff_ideal = train_ff("ff-ideal", 0.0)
    bp_ideal = train_bp("bp-ideal", 0.0)
    for s in cfg.strengths:
        seed_everything(cfg.seed)
        on_device = DeviceMLP(device_layers(cfg, d_in, s, "relu"), cfg.widths[-1]).to(device)
        table["bp-deployed"][s] = backprop.error_pct(deploy(bp_ideal, on_device), data.x_test,
                                                     data.y_test, cfg.dtype)
        ff_dev = ff.FFNet(device_layers(cfg, d_in, s), sup.rule(cfg)).to(device)
        table["ff-deployed"][s] = ff_error(deploy(ff_ideal, ff_dev), data)
        if s == 0:
            table["bp-in-loop"][s] = table["bp-deployed"][s]
            table["ff-in-place"][s] = table["ff-deployed"][s]
            continue
        table["bp-in-loop"][s] = backprop.error_pct(train_bp(f"bp-in-loop-s{s:g}", s),
                                                    data.x_test, data.y_test, cfg.dtype)
        table["ff-in-place"][s] = ff_error(train_ff(f"ff-in-place-s{s:g}", s), data)
        if not run.quiet:
            print(f"strength {s:g}: " + ", ".join(f"{m} {table[m][s]:.2f} %" for m in METHODS),
                  flush=True)

    run.train_seconds = run.stages_seconds()
    energy_proxy = measure_energy(cfg, data, max(max(cfg.strengths), 1.0))
    strengths = list(cfg.strengths)
    lines = ["Test error (%) on devices of each strength (1 = the realistic defaults of "
             "`mortal.hardware.Imperfections`).", "",
             "| strength | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    lines += [f"| {s:g} | " + " | ".join(f"{table[m][s]:.2f}" for m in METHODS) + " |"
              for s in strengths]
    (run.dir / "table.md").write_text("\n".join(lines) + "\n")
    plot(run.dir / "error_vs_strength.png", strengths, table)
    worst = max(strengths)
    return standard_results(
        RECIPE, cfg, run, len(data.x_train), table["ff-in-place"][worst],
        test_error_note=f"test_error_pct is FF trained in place at strength {worst:g}",
        table={m: {f"{s:g}": round(v, 4) for s, v in table[m].items()} for m in METHODS},
        energy_proxy=energy_proxy, figures=["error_vs_strength.png"], dtype=cfg.dtype,
    )


def measure_energy(cfg: Config, data: Any, strength: float) -> dict[str, dict[str, float]]:
    """One real training step of each method, counted by `mortal.energy`: matrix work and
    peak stored activations per training example. "Deployed" methods train on the ideal model
    (strength 0); the in-place ones on a device of `strength`. FF's hard negatives add one
    neutral-label pass per example per epoch (`hard_negative_*`)."""
    device = data.x_train.device
    d_in = data.x_train.shape[1]
    out: dict[str, dict[str, float]] = {}
    g = torch.Generator().manual_seed(cfg.seed)
    for method in METHODS:
        s = 0.0 if method.endswith("deployed") else strength
        seed_everything(cfg.seed)
        if method.startswith("bp"):
            model = DeviceMLP(device_layers(cfg, d_in, s, "relu"), cfg.widths[-1]).to(device)

            def bp_step(n: int, model: nn.Module = model) -> None:
                with autocast(device, cfg.dtype):
                    logits = model(data.x_train[:n])
                nn.functional.cross_entropy(logits.float(), data.y_train[:n]).backward()

            out[method] = energy.measure(bp_step, model, cfg.bp_batch_size)
            continue
        net = ff.FFNet(device_layers(cfg, d_in, s), sup.rule(cfg)).to(device)

        def ff_step(n: int, net: ff.FFNet = net) -> None:
            x, y = data.x_train[:n], data.y_train[:n]
            net.train_step(embed_label(x, y, 10, cfg.label_value),
                           embed_label(x, wrong_labels(y, 10, g), 10, cfg.label_value))

        def hard_step(n: int, net: ff.FFNet = net) -> None:
            ff.hard_negative_table(net, data.x_train[:n], data.y_train[:n], sup.training(cfg), g)

        row = energy.measure(ff_step, net, cfg.batch_size)
        hard = energy.measure(hard_step, net, 1000)
        row["hard_negative_flops_per_example_per_epoch"] = hard["matmul_flops_per_example"]
        out[method] = row
    return out


def plot(path: Any, strengths: list[float], table: dict[str, dict[float, float]]) -> None:
    """Test error against imperfection strength, one line per method."""
    with figure(path, "imperfection strength (1 = realistic)", "test error (%)",
                ylog=True) as ax:
        for m in METHODS:
            ax.plot(strengths, [table[m][s] for s in strengths], marker="o", label=m)


RECIPE = register(Recipe(
    name="mortal-device-mnist",
    paper="Hinton 2022 interview (mortal computation); FF paper §1 (no forward model needed)",
    setting="MNIST, 3x1000 on simulated analog devices; BP/FF, deployed vs trained in place; "
            "sweep of imperfection strength",
    dataset="mnist",
    paper_test_error_pct=None,
    config=Config,
    train=train,
))
