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
import time

import torch

from mortal.arch.glom import Glom
from mortal.config import build, parse_sets
from mortal.loop import epoch_order, lr_factor, make_optimizer, seed_everything, set_lr
from mortal.recipes.common import load_split
from mortal.recipes.glom_mnist import Config
from mortal.recipes.glom_parts import rule_of, spec_of
from mortal.rules import ff
from mortal.rules import glom as rule_mod


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
    model.tau, model.far_negatives = rule.tau, rule.far_negatives
    model.image_negatives = rule.image_negatives
    opt = make_optimizer("adam", model.parameters(), rule.lr)
    g = torch.Generator().manual_seed(cfg.seed + 17)
    n, per_epoch, t0 = len(data.x_train), len(data.x_train) // cfg.batch_size, time.time()
    steps = 0 if args.untrained else args.steps
    for s in range(steps):
        set_lr(opt, rule.lr * lr_factor("cosine", s, steps))
        epoch, i = divmod(s, per_epoch)
        idx = epoch_order(n, cfg.seed, epoch, "cpu")[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        rule_mod.local_step(model, data.x_train[idx].view(-1, 1, 28, 28), rule, opt, g=g)
    train_s = time.time() - t0
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
