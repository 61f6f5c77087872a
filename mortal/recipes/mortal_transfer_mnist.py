"""mortal-transfer-mnist: when a mortal device dies, its knowledge moves to a new device through
what it outputs, not through its weights (the 2022 interview's "mortal computation").

An old device (simulated analog hardware, `mortal.hardware`) is trained in place by FF with
labels, and given a softmax readout. A new device, made from another seed and so with other
imperfections, then learns in place from the old one's outputs alone: on an unlabelled
transfer set, the old device's logits at temperature T give soft targets p_T. The new device's
hidden layers learn by FF with those targets as their label signal: the positive input carries
a label drawn from p_T, the negative one a label drawn from p_T's other classes (so the old
device's confusions are the hard negatives); its readout learns p_T by distillation
(`mortal.rules.distill`). Compared with: copying the old weights onto the new device, and
training the new device in place from the true labels of the same images.
Accuracy retained = new device's test accuracy / old device's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from mortal.config import check
from mortal.data.negatives import embed_label
from mortal.loop import device_of, epoch_order, make_optimizer, seed_everything
from mortal.recipes import Recipe, register
from mortal.recipes import ff_supervised_mnist as sup
from mortal.recipes import mortal_device_mnist as dev
from mortal.recipes.common import load_split, standard_results
from mortal.rules import ff
from mortal.rules.backprop import Split
from mortal.rules.distill import distill_loss, soften
from mortal.runs import check_finite
from mortal.runs.report import figure


@dataclass
class Config(dev.Config):
    """The old device as in mortal-device-mnist (3x1000, FF in place, 20 epochs) at one
    strength; the new device's training length, the transfer-set sizes and temperatures."""

    strength: float = 1.0
    new_device_seed: int = 2000
    transfer_sizes: tuple[int, ...] = (1000, 3000, 10000, 60000)
    temperature: float = 2.0  # T for the transfer-size sweep
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # T sweep, at temperature_size
    temperature_size: int = 10000
    student_steps: int = 2400  # FF steps of the new device (half the old one's 4800), any size
    readout_epochs: int = 20

    def validate(self) -> list[str]:
        p = super().validate()
        check(self.strength > 0, "strength must be > 0 (a device, not the ideal model)", p)
        check(self.new_device_seed != self.device_seed,
              "new_device_seed must differ from device_seed (a different device)", p)
        check(len(self.transfer_sizes) >= 1 and min(self.transfer_sizes) >= self.batch_size,
              "transfer_sizes must each hold at least one batch", p)
        check(self.temperature > 0 and min(self.temperatures, default=1) > 0,
              "temperatures must be > 0", p)
        check(self.student_steps >= 1, "student_steps must be >= 1", p)
        return p


def new_device(cfg: Config, d_in: int) -> ff.FFNet:
    """A fresh FF net on the new device (its own seed: other imperfections)."""
    layers = dev.device_layers(replace(cfg, device_seed=cfg.new_device_seed), d_in, cfg.strength)
    return ff.FFNet(layers, sup.rule(cfg))


def readout(net: ff.FFNet, x: torch.Tensor, y: torch.Tensor | None, cfg: Config,
            teacher_logits: torch.Tensor | None = None) -> nn.Linear:
    """A softmax readout on the device's neutral-label features: from labels (cross-entropy)
    or from teacher logits at T (distillation, no labels)."""
    feats = net.features(x, 10).float()
    if teacher_logits is None:
        return ff.train_softmax(feats, y, 10, cfg.readout_epochs, cfg.softmax_lr,
                                batch_size=min(1000, len(feats)), seed=cfg.seed)
    head = nn.Linear(feats.shape[1], 10).to(feats.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = make_optimizer("adam", head.parameters(), cfg.softmax_lr)
    bs = min(1000, len(feats))
    for epoch in range(cfg.readout_epochs):
        order = epoch_order(len(feats), cfg.seed + 7919, epoch, feats.device)
        for i in range(0, len(feats) - bs + 1, bs):
            idx = order[i : i + bs]
            loss = distill_loss(head(feats[idx]), teacher_logits[idx], cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head


def accuracy(net: ff.FFNet, head: nn.Linear, data: Split) -> dict[str, float]:
    """Test accuracy (%) both ways: goodness per label (all on the device) and the readout."""
    by_goodness = dev.ff_error(net, data)
    by_readout = ff.error_pct(ff.softmax_predict(head, net.features(data.x_test, 10)),
                              data.y_test)
    return {"goodness": round(100 - by_goodness, 3), "readout": round(100 - by_readout, 3)}


def sample_labels(p: torch.Tensor, g: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A positive label ~ p (N, C) and a negative label ~ p without the positive one, for each
    row; uniform over the other classes where p puts everything on the positive."""
    y_pos = torch.multinomial(p, 1, generator=g).squeeze(1)
    rest = p.scatter(1, y_pos[:, None], 0.0)
    others = 1.0 - nn.functional.one_hot(y_pos, p.shape[1]).to(p.dtype)
    rest = torch.where(rest.sum(1, keepdim=True) > 1e-6, rest, others)
    return y_pos, torch.multinomial(rest, 1, generator=g).squeeze(1)


def learn_from_targets(net: ff.FFNet, x: torch.Tensor, targets: torch.Tensor, cfg: Config,
                       run: Any) -> None:
    """FF in place on the new device, the label signal drawn from soft targets (N, 10): the
    positive gets a label ~ targets, the negative a label ~ targets without the positive one
    (uniform when the targets put everything on one class). One-hot targets give supervised
    FF with uniform wrong labels."""
    start, state = run.resume_state()
    if state is not None:
        net.load_state_dict(state["net"])
        for opt, s in zip(net.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
    bs = cfg.batch_size
    per_epoch = len(x) // bs
    g = torch.Generator().manual_seed(cfg.seed)
    for step in range(start, cfg.student_steps):
        if step % per_epoch == 0 or step == start:
            order = epoch_order(len(x), cfg.seed, step // per_epoch, x.device)
        if step % 1000 == 0 or step == start:  # checkpoints fall here, so resuming is exact
            g.manual_seed(cfg.seed * 1_000_003 + step)
        net.set_lr(net.rule.lr * ff.cooldown_factor(step / cfg.student_steps))
        i = step % per_epoch
        idx = order[i * bs : (i + 1) * bs]
        y_pos, y_neg = sample_labels(targets[idx], g)
        with run.timed():
            stats = net.train_step(embed_label(x[idx], y_pos, 10, cfg.label_value),
                                   embed_label(x[idx], y_neg, 10, cfg.label_value))
        check_finite({f"layer {j + 1} loss": s["loss"] for j, s in enumerate(stats)}, step,
                     "the new device")
        if (step + 1) % 1000 == 0 or step + 1 == cfg.student_steps:
            run.log(step=step + 1, seconds=round(run.train_seconds, 2),
                    **{f"loss_layer{j + 1}": float(s["loss"]) for j, s in enumerate(stats)})
            run.save(step + 1, {"net": net.state_dict(),
                                "optimizers": [o.state_dict() for o in net.optimizers]})


def train(cfg: Config, run: Any) -> dict[str, Any]:
    """Old device from labels; then new devices from its outputs, from labels, by weight copy."""
    device = device_of(cfg.device)
    data = load_split(cfg.dataset, cfg.data_root, device, cfg.train_limit)
    d_in = data.x_train.shape[1]
    n_train = len(data.x_train)
    sizes = sorted({min(n, n_train) for n in cfg.transfer_sizes})

    # The old device: FF in place with labels for its whole life, then a readout.
    seed_everything(cfg.seed)
    old = ff.FFNet(dev.device_layers(cfg, d_in, cfg.strength), sup.rule(cfg)).to(device)
    stage = run.stage("old-device")
    loop = replace(sup.training(cfg), eval_every=10**9)
    out = ff.train(old, data.x_train, data.y_train, data.x_test, data.y_test, loop, stage,
                   progress=not run.quiet)
    stage.finish_stage({"stage": "old-device", **out})
    seed_everything(cfg.seed)
    old_head = readout(old, data.x_train, data.y_train, cfg)
    old_acc = accuracy(old, old_head, data)
    with torch.no_grad():
        old_logits = ff.softmax_logits(old_head, old.features(data.x_train, 10))

    def retained(acc: dict[str, float]) -> dict[str, float]:
        return {k: round(acc[k] / old_acc[k], 4) for k in acc}

    # Weight copy: the old weights written onto the new device (its own imperfections).
    seed_everything(cfg.seed)
    copy = dev.deploy(old, new_device(cfg, d_in).to(device))
    copy_acc = accuracy(copy, old_head, data)

    def student(name: str, n: int, temperature: float | None) -> dict[str, Any]:
        """The new device trained in place on the first n images: from the old device's soft
        targets at `temperature`, or from the true labels when temperature is None."""
        c = cfg if temperature is None else replace(cfg, temperature=temperature)
        seed_everything(cfg.seed)
        net = new_device(cfg, d_in).to(device)
        x = data.x_train[:n]
        if temperature is None:
            targets = nn.functional.one_hot(data.y_train[:n], 10).float()
        else:
            targets = soften(old_logits[:n], temperature)
        stage = run.stage(name)
        learn_from_targets(net, x, targets, c, stage)
        seed_everything(cfg.seed)
        head = (readout(net, x, data.y_train[:n], c) if temperature is None
                else readout(net, x, None, c, old_logits[:n]))
        acc = accuracy(net, head, data)
        row = {"transfer_size": n, "temperature": temperature, "accuracy_pct": acc,
               "retained": retained(acc)}
        stage.finish_stage({"stage": name, **row})
        if not run.quiet:
            print(f"{name}: accuracy {acc}", flush=True)
        return row

    by_size = [student(f"distill-n{n}-T{cfg.temperature:g}", n, cfg.temperature) for n in sizes]
    by_labels = [student(f"labels-n{n}", n, None) for n in sizes]
    t_size = min(cfg.temperature_size, n_train)
    by_temp = [r for r in by_size if r["transfer_size"] == t_size]
    by_temp += [student(f"distill-n{t_size}-T{t:g}", t_size, t) for t in cfg.temperatures
                if not (t == cfg.temperature and t_size in sizes)]
    by_temp.sort(key=lambda r: r["temperature"])
    run.train_seconds = run.stages_seconds()

    copied = {"accuracy_pct": copy_acc, "retained": retained(copy_acc)}
    write_table(run.dir / "table.md", old_acc, copied, by_size, by_labels, by_temp, cfg)
    plot(run.dir / "retained_vs_size.png", by_size, by_labels, copied["retained"])
    best = by_size[-1]
    return standard_results(
        RECIPE, cfg, run, n_train, 100 - best["accuracy_pct"]["goodness"],
        test_error_note=(f"test_error_pct is the new device taught by the old one on "
                         f"{best['transfer_size']} unlabelled images at T={cfg.temperature:g}"),
        old_device_accuracy_pct=old_acc, weight_copy=copied,
        from_teacher=by_size, from_labels=by_labels, temperature_sweep=by_temp,
        figures=["retained_vs_size.png"], dtype=cfg.dtype,
    )


def write_table(path: Any, old_acc: dict, copied: dict, by_size: list, by_labels: list,
                by_temp: list, cfg: Config) -> None:
    """The report's tables: accuracy and accuracy retained, both classification modes."""
    def cell(r: dict) -> str:
        a, k = r["accuracy_pct"], r["retained"]
        return (f"{a['goodness']:.2f} ({k['goodness']:.3f}) | "
                f"{a['readout']:.2f} ({k['readout']:.3f})")

    lines = [f"Old device (strength {cfg.strength:g}, trained in place with all training labels): "
             f"{old_acc['goodness']:.2f} % by goodness, {old_acc['readout']:.2f} % by readout. "
             "Cells: new-device test accuracy % (accuracy retained).", "",
             "| new device learns from | transfer images | by goodness | by readout |",
             "|---|---|---|---|",
             f"| weight copy | - | {cell(copied)} |"]
    lines += [f"| old device, T={cfg.temperature:g} | {r['transfer_size']} | {cell(r)} |"
              for r in by_size]
    lines += [f"| true labels | {r['transfer_size']} | {cell(r)} |" for r in by_labels]
    lines += ["", "Temperature sweep:", "", "| T | transfer images | by goodness | by readout |",
              "|---|---|---|---|"]
    lines += [f"| {r['temperature']:g} | {r['transfer_size']} | {cell(r)} |" for r in by_temp]
    path.write_text("\n".join(lines) + "\n")


def plot(path: Any, by_size: list, by_labels: list, copy_retained: dict) -> None:
    """Accuracy retained (by goodness) against transfer-set size."""
    with figure(path, "transfer-set size (images)", "accuracy retained (new / old)",
                xlog=True) as ax:
        xs = [r["transfer_size"] for r in by_size]
        ax.plot(xs, [r["retained"]["goodness"] for r in by_size], marker="o",
                label="from the old device's outputs")
        ax.plot(xs, [r["retained"]["goodness"] for r in by_labels], marker="s",
                label="from true labels")
        ax.axhline(copy_retained["goodness"], color="gray", ls="--", label="weight copy")


RECIPE = register(Recipe(
    name="mortal-transfer-mnist",
    paper="Hinton 2022 interview (mortal computation: knowledge passes by distillation)",
    setting="MNIST, 3x1000 simulated analog devices; an old device trained in place teaches a "
            "new one through its outputs; sweep of transfer-set size and T",
    dataset="mnist",
    paper_test_error_pct=None,
    config=Config,
    train=train,
))
