"""Re-train the linear softmax of a finished ff-unsupervised-mnist, ff-local-mnist or
ff-supervised-mnist run on other layers of its net, or with other softmax settings: is a gap in
the readout or in the features?

    python scripts/ff_readout.py RUN_DIR [--skip K ...] [--untrained]
        [--epochs E ...] [--lr R ...] [--weight-decay W ...] [--val N]

Loads RUN_DIR/config.json and checkpoint.safetensors. For each K and each softmax setting
(default: the recipe's epochs and rate, no weight decay, its seed), trains the softmax on the
normalised activities of layers K+1..L and prints one JSON line with its test error. With
`--val N` the softmax is trained on all but the last N training images, and their error is
printed too, so that a setting can be chosen on them rather than on the test set.
`--untrained` reads the same net at its seeded initialisation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from dataclasses import replace

import torch

from mortal import config as configs
from mortal.loop import seed_everything
from mortal.recipes import ff_local_mnist as local
from mortal.recipes import ff_supervised_mnist as sup
from mortal.recipes import get
from mortal.recipes.common import load_split
from mortal.rules import ff
from mortal.runs import checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--skip", type=int, nargs="+", default=None,
                   help="first layers to leave out (default: the run's softmax_skip)")
    p.add_argument("--untrained", action="store_true", help="the net before any FF training")
    p.add_argument("--epochs", type=int, nargs="+", default=None, help="softmax epochs")
    p.add_argument("--lr", type=float, nargs="+", default=None, help="softmax Adam rates")
    p.add_argument("--weight-decay", type=float, nargs="+", default=[0.0])
    p.add_argument("--val", type=int, default=0,
                   help="hold out the last N training images to choose a setting on")
    args = p.parse_args()
    saved = json.load(open(f"{args.run_dir}/config.json"))
    builders = {"ff-unsupervised-mnist": sup.build, "ff-supervised-mnist": sup.build,
                "ff-local-mnist": local.build}
    if saved["recipe"] not in builders:
        raise SystemExit(f"{saved['recipe']}: this script reads {', '.join(builders)} runs only")
    recipe = get(saved["recipe"])
    cfg = configs.build(recipe.config, saved["config"])
    seed_everything(cfg.seed)
    data = load_split(cfg.dataset, cfg.data_root, torch.device("cpu"), cfg.train_limit)
    net = builders[saved["recipe"]](cfg, data.x_train.shape[1])
    if not args.untrained:
        net.load_state_dict(
            checkpoint.load(f"{args.run_dir}/checkpoint.safetensors")["state"]["net"])
    side = math.isqrt(data.x_train.shape[1])
    loop = replace(sup.training(cfg), image_shape=(1, side, side))
    supervised = saved["recipe"] == "ff-supervised-mnist"
    n_fit = len(data.x_train) - args.val
    if not 0 <= args.val < len(data.x_train):
        raise SystemExit(f"--val {args.val}: must leave training images to fit on")
    grid = list(itertools.product(args.epochs or [loop.softmax_epochs],
                                  args.lr or [loop.softmax_lr], args.weight_decay))
    for skip in args.skip or [getattr(cfg, "softmax_skip", 0)]:
        with torch.no_grad():
            f_train = net.features(data.x_train, loop.n_classes, skip, neutral_label=supervised)
            f_test = net.features(data.x_test, loop.n_classes, skip, neutral_label=supervised)
        for epochs, lr, wd in grid:
            t0 = time.perf_counter()
            head = ff.train_softmax(f_train[:n_fit], data.y_train[:n_fit], loop.n_classes,
                                    epochs=epochs, lr=lr, weight_decay=wd, seed=cfg.seed)
            row = {"run": args.run_dir, "untrained": args.untrained,
                   "layers": f"{skip + 1}-{len(net.layers)}", "softmax_epochs": epochs,
                   "softmax_lr": lr, "softmax_weight_decay": wd, "fit_images": n_fit}
            if args.val:
                row["val_error_pct"] = round(
                    ff.error_pct(ff.softmax_predict(head, f_train[n_fit:]),
                                 data.y_train[n_fit:]), 4)
            row["test_error_softmax_pct"] = round(
                ff.error_pct(ff.softmax_predict(head, f_test), data.y_test), 4)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
