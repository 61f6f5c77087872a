"""Diagnose GLOM on the parts world: per level and iteration, the ARI against parts and objects,
the object classification of a linear probe, and how spread the embeddings are (mean cosine
between foreground columns of an image), for the initial nets and after a few local steps.

    python scripts/glom_diagnose.py --steps 40 --set beta=3 --set layout=touching
Prints one JSON line per (nets, iteration): what the recipe would measure, cheaper.

`--supervise-objects` trains instead by backprop through every iteration with a cross-entropy
per object, on the mean top-level embedding of that object's columns (the quantity the
recipe's classification probes): a check of whether the architecture can carry object
identity to the top level at all when it is told what to carry."""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from mortal import config
from mortal.arch.glom import Glom
from mortal.data.parts import column_ids, make_parts
from mortal.loop import autocast
from mortal.recipes import glom_parts as gp
from mortal.rules import ff
from mortal.rules import glom as rule_mod


def parse_sets(sets: list[str]) -> gp.Config:
    """A glom-parts Config with `key=value` overrides, coerced and validated as `mortal run`
    does (so a tuple key whose default is empty, such as far_radius, parses too)."""
    return config.build(gp.Config, config.parse_sets(sets))


def spread(e: torch.Tensor, fg: torch.Tensor) -> list[float]:
    """(B, L, N, D), (B, N) bool -> per level the mean cosine between foreground columns."""
    out = []
    for lvl in range(e.shape[1]):
        vals = []
        for b in range(len(e)):
            u = torch.nn.functional.normalize(e[b, lvl][fg[b]], dim=-1)
            s = u @ u.T
            m = len(u)
            vals.append(float((s.sum() - m) / max(m * (m - 1), 1)))
        out.append(round(float(np.mean(vals)), 3))
    return out


def measure(model: Glom, cfg: gp.Config, iters: list[int], n_test: int, n_probe: int,
            amb: float, seed: int) -> list[dict]:
    """Per iteration in `iters`: ARIs per level (best threshold), probe accuracy per level."""
    p = cfg.patch
    test = make_parts(n_test, seed + 2, amb, layout=cfg.layout)
    probe = make_parts(n_probe, seed + 3, amb, layout=cfg.layout)
    h_test = rule_mod.states(model, test.images, max(iters), cfg.dtype, history=True)
    h_probe = rule_mod.states(model, probe.images, max(iters), cfg.dtype, history=True)
    part_ids, obj_ids = column_ids(test.part_ids, p), column_ids(test.object_ids, p)
    obj_probe = column_ids(probe.object_ids, p)
    n_obj = probe.classes.shape[1]
    rows = []
    for t in iters:
        e, ep = h_test[:, t], h_probe[:, t]
        row = {"iteration": t, "spread": spread(e, part_ids > 0)}
        for what, ids in (("part", part_ids), ("object", obj_ids)):
            _, best = gp.best_thresholds(e, ids, cfg.thresholds)
            row[f"{what}_ari"] = [round(a, 3) for a in best]
        acc = []
        for lvl in range(cfg.n_levels):
            f_tr, ok_tr = gp.object_features(ep[:, lvl], obj_probe, n_obj)
            f_te, ok_te = gp.object_features(e[:, lvl], obj_ids, n_obj)
            y_tr, y_te = probe.classes.reshape(-1), test.classes.reshape(-1)
            acc.append(round(gp.probe_accuracy(f_tr[ok_tr], y_tr[ok_tr], f_te[ok_te],
                                               y_te[ok_te], cfg), 1))
        row["class_acc"] = acc
        # does each level say which part type a column shows, across images? (a linear probe
        # per column; InfoNCE against other images' same column could push it apart)
        types_tr = column_ids(probe.part_types + 1, p)
        types_te = column_ids(test.part_types + 1, p)
        type_acc = []
        for lvl in range(cfg.n_levels):
            m_tr, m_te = types_tr > 0, types_te > 0
            head = ff.train_softmax(ep[:, lvl][m_tr], types_tr[m_tr] - 1, n_classes=3,
                                    epochs=100, lr=1e-2, batch_size=500, seed=0)
            pred = ff.softmax_predict(head, e[:, lvl][m_te])
            type_acc.append(round(100 - ff.error_pct(pred, types_te[m_te] - 1), 1))
        row["part_type_acc"] = type_acc
        rows.append(row)
    return rows


def object_step(model: Glom, head: torch.nn.Module, pb, cfg: gp.Config, rule: rule_mod.GlomRule,
                opt: torch.optim.Optimizer) -> dict[str, float]:
    """One backprop step of per-object cross-entropy from the top level after
    `rule.iterations` iterations (every level and iteration in the graph)."""
    obj = column_ids(pb.object_ids, cfg.patch)
    n_obj = pb.classes.shape[1]
    with autocast(pb.images.device, rule.dtype):
        e = model(pb.images, rule.iterations)  # Glom.forward: gradients through every step
    feats, ok = gp.object_features(e[:, -1], obj, n_obj)
    loss = torch.nn.functional.cross_entropy(head(feats[ok]).float(), pb.classes.reshape(-1)[ok])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss_main": float(loss.detach())}


def main() -> None:
    """Train `--steps` local steps, measure before and after."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--amb", type=float, default=0.5)
    ap.add_argument("--n-test", type=int, default=24)
    ap.add_argument("--n-probe", type=int, default=150)
    ap.add_argument("--iters", default="0,5,20")
    ap.add_argument("--no-untrained", action="store_true")
    ap.add_argument("--supervise-objects", action="store_true",
                    help="backprop a per-object class loss from the top level instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = parse_sets(args.set)
    torch.manual_seed(cfg.seed)
    image = tuple(make_parts(1, 0).images.shape[1:])
    model = Glom(gp.spec_of(cfg, image))
    untrained = copy.deepcopy(model)
    rule = gp.rule_of(cfg, 4)
    iters = [int(i) for i in args.iters.split(",")]
    if not args.no_untrained:
        for row in measure(untrained, cfg, iters, args.n_test, args.n_probe, args.amb, 10_000):
            print(json.dumps({"nets": "untrained", **row}), flush=True)
    rule_mod.attach(model, rule)
    head = (torch.nn.Linear(model.spec.dim, 4) if args.supervise_objects
            else rule_mod.make_head(model, rule))  # paper / supervised modes only
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=rule.lr)
    g = torch.Generator().manual_seed(cfg.seed + 17)
    t0 = time.perf_counter()
    amb = cfg.ambiguities
    for step in range(args.steps):
        pb = make_parts(cfg.batch_size, 1_000_003 * (cfg.seed + 1) + step, amb[step % len(amb)],
                        layout=cfg.layout)
        if args.supervise_objects:
            stats = object_step(model, head, pb, cfg, rule, opt)
        elif rule.mode == "local":
            stats = rule_mod.local_step(model, pb.images, rule, opt)
        else:  # supervised: the class of the first (left) object, as the recipe does
            stats = rule_mod.paper_step(model, head, pb.images, pb.classes[:, 0], rule, opt, g)
        if step % 10 == 0 or step == args.steps - 1:
            print(json.dumps({"step": step, "s": round(time.perf_counter() - t0, 1),
                              **{k: round(v, 3) for k, v in stats.items()}}), flush=True)
    for row in measure(model, cfg, iters, args.n_test, args.n_probe, args.amb, 10_000):
        print(json.dumps({"nets": f"trained {args.steps}", **row}), flush=True)


if __name__ == "__main__":
    main()
