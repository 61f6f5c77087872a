"""The GLOM recipes' linear probe (a softmax, 100 epochs of Adam at lr 1e-2) on raw pixels:
what a probe reads with no learned features, the floor for glom-mnist and glom-fashion.

    python scripts/probe_raw_pixels.py [mnist fashion-mnist]"""

from __future__ import annotations

import sys

import torch

from mortal.recipes.common import load_split
from mortal.rules import ff


def main() -> None:
    for name in sys.argv[1:] or ["mnist", "fashion-mnist"]:
        d = load_split(name, None, torch.device("cpu"))
        head = ff.train_softmax(d.x_train.bfloat16(), d.y_train, 10, epochs=100, lr=1e-2,
                                batch_size=1000)
        acc = 100 - ff.error_pct(ff.softmax_predict(head, d.x_test.bfloat16()), d.y_test)
        print(f"{name}: linear probe on raw pixels, test accuracy {acc:.2f} %")


if __name__ == "__main__":
    main()
