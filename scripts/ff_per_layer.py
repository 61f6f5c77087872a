"""Per-layer and train-vs-test error of a finished ff-supervised-mnist run (mode a).

    python scripts/ff_per_layer.py RUN_DIR [--train-n 10000]

Loads RUN_DIR/checkpoint.safetensors and prints JSON: the error when the label is chosen by
the goodness of each layer alone and of several layer sets, on the test set and on the first
`train-n` training images (the generalisation gap).
"""

from __future__ import annotations

import argparse
import json

import torch

from mortal import config as configs
from mortal.data.negatives import embed_label
from mortal.recipes import ff_supervised_mnist as recipe
from mortal.recipes.common import load_split
from mortal.runs import checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir")
    p.add_argument("--train-n", type=int, default=10000)
    args = p.parse_args()
    saved = json.load(open(f"{args.run_dir}/config.json"))["config"]
    cfg = configs.build(recipe.Config, saved)
    data = load_split(cfg.dataset, cfg.data_root, torch.device("cpu"))
    net = recipe.build(cfg, data.x_train.shape[1])
    net.load_state_dict(checkpoint.load(f"{args.run_dir}/checkpoint.safetensors")["state"]["net"])
    n_layers = len(net.layers)
    sets = {f"layer {i + 1}": [i] for i in range(n_layers)}
    sets.update({"layers 2..L (the recipe)": list(range(1, n_layers)),
                 "all layers": list(range(n_layers))})
    out = {}
    for split, x, y in (("test", data.x_test, data.y_test),
                        ("train", data.x_train[: args.train_n], data.y_train[: args.train_n])):
        g = torch.zeros(len(x), 10, n_layers)
        for c in range(10):
            acts = net.activities(embed_label(x, torch.full((len(x),), c)))
            for i, h in enumerate(acts):
                g[:, c, i] = net.goodness(h)
        out[split] = {name: round(100 * (g[:, :, idx].sum(-1).argmax(1) != y).float().mean().item(),
                                  3) for name, idx in sets.items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
