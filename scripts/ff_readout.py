"""Re-train the linear softmax of a finished ff-unsupervised-mnist (or ff-supervised-mnist) run
on other layers of its net, e.g. the top layer alone, to compare with a DBN's readout.

    python scripts/ff_readout.py RUN_DIR [--skip K ...] [--untrained]

Loads RUN_DIR/config.json and checkpoint.safetensors; for each K, trains the recipe's softmax
(same epochs, rate and seed) on the normalised activities of layers K+1..L and prints one JSON
line with its test error. `--untrained` reads the same net at its seeded initialisation.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace

import torch

from mortal import config as configs
from mortal.loop import seed_everything
from mortal.recipes import ff_supervised_mnist as sup
from mortal.recipes import get
from mortal.recipes.common import load_split
from mortal.rules import ff
from mortal.runs import checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir")
    p.add_argument("--skip", type=int, nargs="+", default=None,
                   help="first layers to leave out (default: the run's softmax_skip)")
    p.add_argument("--untrained", action="store_true", help="the net before any FF training")
    args = p.parse_args()
    saved = json.load(open(f"{args.run_dir}/config.json"))
    if saved["recipe"] not in ("ff-unsupervised-mnist", "ff-supervised-mnist"):
        raise SystemExit(f"{saved['recipe']}: this script reads dense FF nets only")
    recipe = get(saved["recipe"])
    cfg = configs.build(recipe.config, saved["config"])
    seed_everything(cfg.seed)
    data = load_split(cfg.dataset, cfg.data_root, torch.device("cpu"), cfg.train_limit)
    net = sup.build(cfg, data.x_train.shape[1])
    if not args.untrained:
        net.load_state_dict(
            checkpoint.load(f"{args.run_dir}/checkpoint.safetensors")["state"]["net"])
    side = math.isqrt(data.x_train.shape[1])
    loop = replace(sup.training(cfg), image_shape=(1, side, side))
    if saved["recipe"] == "ff-unsupervised-mnist":
        loop = replace(loop, negatives="hybrid", blur_steps=cfg.blur_steps)
    for skip in args.skip or [getattr(cfg, "softmax_skip", 0)]:
        out = ff.evaluate(net, data.x_train, data.y_train, data.x_test, data.y_test,
                          replace(loop, softmax_skip=skip))
        print(json.dumps({"run": args.run_dir, "untrained": args.untrained,
                          "layers": f"{skip + 1}-{len(net.layers)}",
                          "test_error_softmax_pct": round(out["test_error_softmax_pct"], 4)}),
              flush=True)


if __name__ == "__main__":
    main()
