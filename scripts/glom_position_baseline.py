"""The islands of glom-parts' test images made from column positions alone (no net), per
layout and ambiguity: what a GLOM's part and object ARI must beat to say anything about
content. The images, the cut's choice on validation images and the ARI are the recipe's
(`mortal.recipes.glom_parts.position_baseline`, seeds from `eval_seed`).

    python scripts/glom_position_baseline.py [--layouts touching strips]
"""

from __future__ import annotations

import argparse
import json

from mortal.data.parts import make_parts
from mortal.recipes.glom_parts import Config, eval_seed, position_baseline, spec_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layouts", nargs="+", default=["touching", "strips"])
    a = ap.parse_args()
    for layout in a.layouts:
        cfg = Config(layout=layout)
        grid = spec_of(cfg, tuple(make_parts(1, 0).images.shape[1:])).grid
        for k, amb in enumerate(cfg.ambiguities):
            out = position_baseline(cfg, amb, eval_seed(cfg, k), grid)
            print(json.dumps({"layout": layout, "ambiguity": amb, **out}), flush=True)


if __name__ == "__main__":
    main()
