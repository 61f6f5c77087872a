"""Diagnose glom-mnist cheaply: train N local steps (or none), then a linear probe on every
level's embeddings of all columns, and how spread each level is (mean cosine between the
columns of an image; 1 = one vector per image).

    python scripts/glom_mnist_diagnose.py --steps 300 --set views=2 --set tau=0.2
    python scripts/glom_mnist_diagnose.py --untrained --set weights=1,1,1,1

Probes train on the first --n-probe training images and test on the first 5,000 test images
(the recipe probes on all 60,000 / 10,000). Prints one JSON line per iteration count."""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

from mortal.arch.glom import Glom
from mortal.config import build, parse_sets
from mortal.loop import epoch_order, seed_everything
from mortal.recipes.common import load_split
from mortal.recipes.glom_mnist import Config
from mortal.recipes.glom_parts import rule_of, spec_of
from mortal.rules import ff
from mortal.rules import glom as rule_mod
from mortal.runs import Run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--untrained", action="store_true", help="probe the initial nets")
    ap.add_argument("--n-probe", type=int, default=10000)
    ap.add_argument("--iters", default="6", help="comma-separated iteration counts to probe")
    ap.add_argument("--set", action="append", default=[], help="glom-mnist key=value")
    args = ap.parse_args()
    cfg = build(Config, parse_sets(args.set))
    seed_everything(cfg.seed)
    data = load_split(cfg.dataset, cfg.data_root, torch.device("cpu"))
    model = Glom(spec_of(cfg, (1, 28, 28)))
    rule = rule_of(cfg, 10)
    n = len(data.x_train)
    per_epoch = n // cfg.batch_size
    steps = 0 if args.untrained else args.steps

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:  # as glom-mnist draws them
        epoch, i = divmod(step, per_epoch)
        idx = epoch_order(n, cfg.seed, epoch, "cpu")[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        return data.x_train[idx].view(-1, 1, 28, 28), data.y_train[idx]

    train_s = 0.0
    if steps:  # the recipe's own loop, its run records in a scratch directory
        with tempfile.TemporaryDirectory() as tmp:
            run = Run(tmp, "glom-mnist-diagnose", {}, quiet=True, record_env=False)
            train_s = rule_mod.train(model, rule_mod.make_head(model, rule), batch, steps,
                                     rule, run, log_every=steps, seed=cfg.seed,
                                     progress=False)["train_seconds"]
    model.eval()
    x_tr, y_tr = data.x_train[:args.n_probe].view(-1, 1, 28, 28), data.y_train[:args.n_probe]
    x_te, y_te = data.x_test[:5000].view(-1, 1, 28, 28), data.y_test[:5000]
    for iters in (int(t) for t in args.iters.split(",")):
        e_tr = rule_mod.states(model, x_tr, iters, cfg.dtype, batch_size=500)
        e_te = rule_mod.states(model, x_te, iters, cfg.dtype, batch_size=500)
        probe, spread = [], []
        for lvl in range(cfg.n_levels):
            f_tr, f_te = e_tr[:, lvl].flatten(1).bfloat16(), e_te[:, lvl].flatten(1).bfloat16()
            head = ff.train_softmax(f_tr, y_tr, 10, epochs=60, lr=1e-2, batch_size=500)
            probe.append(round(100 - ff.error_pct(ff.softmax_predict(head, f_te), y_te), 2))
            u = e_te[:500, lvl]
            spread.append(round(float((u @ u.transpose(-1, -2)).mean()), 3))
        print(json.dumps({"set": args.set, "steps": steps, "train_seconds": round(train_s),
                          "iterations": iters, "probe_accuracy_per_level": probe,
                          "spread_per_level": spread}), flush=True)


if __name__ == "__main__":
    main()
