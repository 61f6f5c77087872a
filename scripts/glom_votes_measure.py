"""Measure one ambiguity's finished levels in a glom-parts-votes run directory, as the recipe
measures them (`glom_parts_votes.evaluate`), before the run itself has finished: a way to read
a stopped or still-running run's first cells.

    python scripts/glom_votes_measure.py RUN_DIR AMBIGUITY [--out RECORDS.jsonl]
        [--loss DENSITY PAIRS]

Prints (and with --out appends) one JSON line: the run's config, then per level the part and
object ARI, islands per image, classification and drawing loss. With --loss, also the top
level's training loss terms under density weight DENSITY and pairs PAIRS (all or across),
averaged over 8 batches of 32 new training images (fixed seeds): how an objective scores
levels trained under another.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mortal.arch.glom_votes import inked
from mortal.config import build
from mortal.data.parts import make_parts
from mortal.recipes import glom_parts as gp
from mortal.recipes import glom_parts_votes as recipe
from mortal.rules import glom_votes as rule
from mortal.runs import checkpoint as ckpt

KEYS = ("part_ari_per_level", "object_ari_per_level", "object_islands_per_image",
        "classification_accuracy_pct_per_level", "draw_loss_per_level")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("ambiguity", type=float)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--loss", nargs=2, metavar=("DENSITY", "PAIRS"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    saved = json.loads((a.run / "config.json").read_text())["config"]
    cfg = build(recipe.Config, saved)
    levels = recipe.make_levels(cfg)
    for i, level in enumerate(levels):
        path = a.run / "stages" / f"amb{a.ambiguity:g}-level{i}" / "level.safetensors"
        if not path.exists():
            raise SystemExit(f"{path} is missing: level {i} at ambiguity {a.ambiguity:g} has "
                             "not finished training")
        level.load_state_dict(ckpt.load(path)["level"])
        level.eval()
    k = cfg.ambiguities.index(a.ambiguity)
    seed = gp.eval_seed(gp.Config(layout=cfg.layout, n_val=cfg.n_val, n_test=cfg.n_test,
                                  seed=cfg.seed), k)
    ev = recipe.evaluate(levels, cfg, a.ambiguity, seed, torch.device("cpu"))
    rec = {"run": str(a.run), "ambiguity": a.ambiguity, "config": saved,
           **{key: ev[key] for key in KEYS}}
    if a.loss:
        density, pairs = float(a.loss[0]), a.loss[1]
        if pairs not in ("all", "across"):
            raise SystemExit("--loss PAIRS is all or across")
        sums: dict[str, float] = {}
        with torch.no_grad():
            for b in range(8):
                batch = make_parts(32, 555_000 + b, a.ambiguity, layout=cfg.layout)
                terms = rule.level_loss(levels[-1], levels[-2] if len(levels) > 1 else None,
                                        batch.images, inked(batch.images), density,
                                        cfg.density_sigma, cfg.lam[len(levels) - 1],
                                        pairs == "across")
                for key, v in terms.items():
                    sums[key] = sums.get(key, 0.0) + float(v) / 8
        rec["loss_under"] = {"weight": density, "pairs": pairs,
                             **{key: round(v, 4) for key, v in sums.items()}}
    print(json.dumps(rec))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
