"""Short glom-parts experiments: scripts/glom_diagnose.py's measures plus each level's position
share (`glom_parts.position_share`), after N local steps with the recipe's own rule.

    PYTHONPATH=. python scripts/glom_parts_study.py --steps 40 --n-test 32 [--set KEY=VALUE ...]
        [--untrained]          # also measure the initial nets (--steps 0: only them)

Prints one JSON line per measured iteration (and a few training lines). The 2026-12-06 study's
outputs and settings are in results/runs/glom-parts-study-2026-12-06/.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # glom_diagnose, beside this file
import glom_diagnose as gd  # noqa: E402

from mortal.arch.glom import Glom  # noqa: E402
from mortal.config import build  # noqa: E402
from mortal.data.parts import column_ids, make_parts  # noqa: E402
from mortal.recipes import glom_parts as gp  # noqa: E402
from mortal.rules import glom as rule_mod  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--amb", type=float, default=0.5)
    ap.add_argument("--n-test", type=int, default=48)
    ap.add_argument("--n-probe", type=int, default=150)
    ap.add_argument("--iters", default="5,10,20")
    ap.add_argument("--untrained", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = build(gp.Config, dict(kv.split("=", 1) for kv in args.set))
    torch.manual_seed(cfg.seed)
    image = tuple(make_parts(1, 0).images.shape[1:])
    model = Glom(gp.spec_of(cfg, image))
    rule = gp.rule_of(cfg, 4)
    iters = [int(i) for i in args.iters.split(",")]

    def report(net: Glom, tag: str) -> None:
        rows = gd.measure(net, cfg, iters, args.n_test, args.n_probe, args.amb, 10_000)
        probe = make_parts(args.n_probe, 10_000 + 3, args.amb, layout=cfg.layout)
        h = rule_mod.states(net, probe.images, max(iters), cfg.dtype, history=True)
        fg = column_ids(probe.object_ids, cfg.patch) > 0
        for row in rows:
            row["pos_share"] = gp.position_share(h[:, row["iteration"]], fg)
            row.pop("part_type_acc", None)
            print(json.dumps({"nets": tag, **row}), flush=True)

    if args.untrained or args.steps == 0:
        report(copy.deepcopy(model), "untrained")
    if args.steps == 0:
        return
    rule_mod.attach(model, rule)
    opt = torch.optim.Adam(model.parameters(), lr=rule.lr)
    g = torch.Generator().manual_seed(cfg.seed + 17)
    t0 = time.perf_counter()
    amb = cfg.ambiguities
    for step in range(args.steps):
        pb = make_parts(cfg.batch_size, 1_000_003 * (cfg.seed + 1) + step,
                        amb[step % len(amb)], layout=cfg.layout)
        stats = rule_mod.local_step(model, pb.images, rule, opt, None, g)
        if step % 20 == 0 or step == args.steps - 1:
            print(json.dumps({"step": step, "s": round(time.perf_counter() - t0, 1),
                              **{k: round(v, 3) for k, v in stats.items()}}), flush=True)
    report(model, f"trained {args.steps}")


if __name__ == "__main__":
    main()
