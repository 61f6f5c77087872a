"""An object level (mortal.rules.glom_votes) above a saved part-level net of the fifteenth
session's study (`scripts/glom_generative.py`) or of a glom-parts-votes run (its
`stages/amb*-level0/level.safetensors`), measured as glom-parts-votes measures.

Why: the recipe's level 1 copied the parts above some part-level nets. This trains only the
level above, on a part net known to cause the copy, to compare ways of stopping it:
  --sigma       the object level's attention width (GLOM: higher levels attend more widely)
  --draws both  the object level draws the pixels too, beside the part level's islands
  --pairs across  the density counts only votes shared with columns of other part islands

    python scripts/glom_votes_above.py PARTS.pt AMBIGUITY [--sigma 4] [--density 0.01]
        [--lam 0.01] [--draws parts|both] [--pairs all|across] [--steps 1000] [--seed 0]
        --out RECORDS.jsonl

Appends one JSON line (settings, then glom_parts_votes.evaluate's measures) to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from mortal.arch.glom_votes import PATCH, VoteLevel
from mortal.data.parts import column_ids, make_parts
from mortal.recipes import glom_parts as gp
from mortal.recipes import glom_parts_votes as recipe
from mortal.rules import glom_votes as rule
from mortal.runs import checkpoint as ckpt


class NoRun:
    """train_level's run: progress rows printed, nothing saved."""

    train_seconds = 0.0
    resume_state = staticmethod(lambda: (0, None))
    save = staticmethod(lambda *a, **k: None)
    timed = staticmethod(contextlib.nullcontext)

    @staticmethod
    def log(**row: float) -> None:
        print(json.dumps(row), flush=True)


def load_study_level(path: Path) -> VoteLevel:
    """A part level from a glom_generative.py checkpoint ({"vote", "field"} state dicts), or
    from a glom-parts-votes stage (stages/amb*-level0/level.safetensors)."""
    level = VoteLevel((48, 64))
    if path.suffix == ".safetensors":
        level.load_state_dict(ckpt.load(path)["level"])
        return level
    saved = torch.load(path)
    level.vote.load_state_dict(saved["vote"])
    level.field.load_state_dict(saved["field"])
    return level


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("parts", type=Path)
    ap.add_argument("ambiguity", type=float)
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--lam", type=float, default=0.01)
    ap.add_argument("--draws", choices=("parts", "both"), default="parts")
    ap.add_argument("--pairs", choices=("all", "across"), default="all")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    below = load_study_level(a.parts)
    above = VoteLevel((48, 64), draws=6 + (PATCH * PATCH if a.draws == "both" else 0),
                      sigma=a.sigma)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = make_parts(32, 1000 + step, a.ambiguity, layout="touching")  # the study's images
        return b.images, column_ids(b.object_ids, PATCH) > 0

    t0 = time.time()
    rule.train_level(above, below, batch, a.steps, NoRun(), density=a.density,
                     density_sigma=2.0, lam=a.lam, lr=1e-3, across=a.pairs == "across",
                     log_every=250, progress=False)
    cfg = recipe.Config()
    seed = gp.eval_seed(gp.Config(), cfg.ambiguities.index(a.ambiguity))
    ev = recipe.evaluate([below.eval(), above.eval()], cfg, a.ambiguity, seed,
                         torch.device("cpu"))
    ev.pop("pictures")
    rec = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
           "seconds": round(time.time() - t0, 1), **ev}
    print(json.dumps(rec))
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
