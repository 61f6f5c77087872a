"""Do islands form at parts or objects when an island must *draw* what it covers? (glom-parts study)

The object-centre votes study (`scripts/glom_votes.py`) found parts or everything, never
objects: a vote density has no notion of an object. Here the votes must also pass GLOM's
top-down, generative check. Every column votes, with no labels and no position input, for an
object: a class code (softmax over `k`) and a centre (its place plus an offset of at most 12
px). The votes settle into islands by GLOM's attention with no learned weights: `iters`
rounds of each vote moving to the similarity-weighted mean of its image's foreground votes
(Gaussian in the centre, `sigma` pixels, plus `beta` times the codes' dot product; a mean
shift). A top-down net, the same at every column (a neural field), then draws the column's
4x4 patch from its island's code and the column's place relative to the island's centre.
The loss is the drawing's cross-entropy plus `density` x glom_votes.py's vote density with
`lam` x the squared offset. Measured (docs/glom.md, fifteenth session): drawing alone keeps private
votes, density alone merges the two objects, and together at lam 0.01 the islands are objects
or parts. With `--below PARTS.pt` a second level learns on top of a saved (frozen) part-level
net: its field draws the part level's settled votes at each column (code, and centre
relative to the column) instead of pixels, and its islands are objects. Each level is trained
end to end (through its island rounds, like glom-parts' mode=paper), not yet by local
objectives.

    python scripts/glom_generative.py AMBIGUITY STEPS --density 0.1 --lam 0.01 [--seed S] --out D
    python scripts/glom_generative.py AMB STEPS --density 0.01 --lam 0.01 --below PARTS.pt --out D
    python scripts/glom_generative.py AMBIGUITY 1 --measure D/NET.pt [--picture F.png]  # and
                                                      # the same --below for a second level

While training: ARIs on 96 touching-layout images of seed 999 (as glom_votes.py), islands by
average linkage on the settled votes (centre in pixels, code times `beta` x 12), at cuts of
2 / 4 / 8 pixels. At the end (and with --measure): the same on glom-parts' own validation and
test images of that ambiguity, each cut chosen on the validation images, beside the recipe's
position-alone baseline (`final_measure`). Prints progress lines, then one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from glom_votes import H, P, W, measure, patch_centres, vote_loss

from mortal.arch.glom_votes import field_net, patches, settle, vote_net
from mortal.data.parts import PartsBatch, column_classes, column_ids, make_parts
from mortal.recipes import glom_parts
from mortal.recipes.glom_parts_votes import label_panel

REACH = 12.0  # pixels: an object's half size; offsets and relative places are in these units


def oracle_votes(batch: PartsBatch, cent: torch.Tensor, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The votes of the right answer: every column of an object votes for the mean place of
    that object's columns, with its class as a (scaled) one-hot code."""
    obj = column_ids(batch.object_ids, P)                            # B, columns; 0 = none
    member = F.one_hot(obj, int(obj.max()) + 1)[..., 1:].float()     # B, columns, objects
    centres = member.transpose(1, 2) @ cent / member.sum(1).clamp_min(1)[..., None]
    votes = member @ centres + (obj == 0)[..., None] * cent
    cls = column_classes(batch.object_ids, batch.classes, P).clamp_min(0)
    return votes, 10.0 * F.one_hot(cls, k).float()


def forward(vnet: torch.nn.Module, batch: PartsBatch, fg: torch.Tensor, cent: torch.Tensor,
            a: argparse.Namespace, noise: float = 0.0
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each column's vote (its centre before settling) and its settled (centre, code)
    (`a.oracle`: the right answer's votes)."""
    if a.oracle:
        votes, logits = oracle_votes(batch, cent, a.k)
    else:
        out = vnet(batch.images).flatten(2).transpose(1, 2)          # B, columns, 2 + k
        votes = cent + REACH * torch.tanh(out[..., :2])
        logits = out[..., 2:]
    if noise:  # a vote that many others share survives noise; a column's private code does not
        votes = votes + noise * torch.randn_like(votes)
        logits = logits + noise / 2 * torch.randn_like(logits)
    centre, code = settle(votes, torch.softmax(logits, -1), fg, a.iters, a.sigma, a.beta)
    return votes, centre, code


def reconstruction(fnet: torch.nn.Module, centre: torch.Tensor, code: torch.Tensor,
                   images: torch.Tensor, fg: torch.Tensor, cent: torch.Tensor) -> torch.Tensor:
    """Mean BCE of the field's drawing of every foreground column's own patch from its
    island's code and its place relative to the island's centre."""
    rel = (cent - centre) / REACH
    return F.binary_cross_entropy_with_logits(fnet(torch.cat([code, rel], -1))[fg],
                                              patches(images)[fg])


def drawer(a: argparse.Namespace, cent: torch.Tensor) -> Any:
    """The drawing loss (fnet, centre, code, batch, fg) -> scalar: the column's own patch, or
    with `a.below` (a saved net of this script, frozen: the level below, e.g. parts) the level
    below's settled state at the column, its code and its island's centre relative to the
    column, by mean squared error. The level below learns nothing from this loss."""
    if not a.below:
        return lambda fnet, centre, code, batch, fg: reconstruction(
            fnet, centre, code, batch.images, fg, cent)
    below = vote_net(a.k)
    below.load_state_dict(torch.load(a.below)["vote"])
    below.requires_grad_(False)
    plain = argparse.Namespace(**{**vars(a), "oracle": False})

    def draw(fnet: torch.nn.Module, centre: torch.Tensor, code: torch.Tensor,
             batch: PartsBatch, fg: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            _, c_below, code_below = forward(below, batch, fg, cent, plain)
            target = torch.cat([code_below, (c_below - cent) / REACH], -1)
        pred = fnet(torch.cat([code, (cent - centre) / REACH], -1))
        return F.mse_loss(pred[fg], target[fg])
    return draw


def embedding(centre: torch.Tensor, code: torch.Tensor, beta: float) -> torch.Tensor:
    """What the islands are clustered on: the settled centre (pixels) beside the code, scaled
    so that codes as far apart as they can be sit beta x REACH pixels apart."""
    return torch.cat([centre, beta * REACH * code], -1)


def class_accuracy(code: torch.Tensor, classes: torch.Tensor) -> float:
    """Foreground columns whose code's largest entry names their object's class, under the
    best one-to-one naming of code entries (no labels were used to learn the codes)."""
    guess, truth = code.argmax(-1)[classes >= 0], classes[classes >= 0]
    k = code.shape[-1]
    return max(float((torch.tensor(perm)[guess] == truth).float().mean())
               for perm in itertools.permutations(range(k)))


def final_measure(vnet: torch.nn.Module, fnet: torch.nn.Module, cent: torch.Tensor,
                  a: argparse.Namespace, draw: Any) -> dict:
    """On glom-parts' own validation and test images of this ambiguity (the recipe's seeds
    and counts, so beside its records and its position baseline): islands of the settled
    (centre, code) and of the centre alone, each cut chosen on the validation images, object
    and part ARI; the code's class accuracy; the reconstruction; islands from position alone."""
    cfg = glom_parts.Config(layout="touching")
    seed = glom_parts.eval_seed(cfg, cfg.ambiguities.index(a.ambiguity))
    grid = (H // P, W // P)
    out: dict = {"position_alone": glom_parts.position_baseline(cfg, a.ambiguity, seed, grid)}
    cuts = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
    sets = {}
    for name, part_no, n in (("val", 1, cfg.n_val), ("test", 2, cfg.n_test)):
        b = glom_parts.split(cfg, a.ambiguity, seed, n, part_no)
        obj, part = column_ids(b.object_ids, P), column_ids(b.part_ids, P)
        with torch.no_grad():
            votes, c, code = forward(vnet, b, obj > 0, cent, a)
            rec = draw(fnet, c, code, b, obj > 0).item()
        sets[name] = (b, obj, part, c, code, rec, votes)
    for emb_name, emb in (("centre_code", lambda c, code: embedding(c, code, a.beta)),
                          ("centre", lambda c, code: c)):
        _, vo, vp, vc, vcode, _, _ = sets["val"]
        val = measure(emb(vc, vcode), vo, vp, cuts)
        cut_o = max(cuts, key=lambda t: val[str(t)]["object_ari"])
        cut_p = max(cuts, key=lambda t: val[str(t)]["part_ari"])
        b, to, tp, tc, tcode, _, _ = sets["test"]
        test = measure(emb(tc, tcode), to, tp, tuple(sorted({cut_o, cut_p})))
        out[emb_name] = {"object_ari": test[str(cut_o)]["object_ari"], "object_cut_px": cut_o,
                         "islands_per_image": test[str(cut_o)]["clusters"],
                         "part_ari": test[str(cut_p)]["part_ari"], "part_cut_px": cut_p,
                         "islands_per_image_part_cut": test[str(cut_p)]["clusters"]}
    b, tobj, tpart, tc, tcode, rec, tvotes = sets["test"]
    out["class_accuracy_columns"] = round(
        class_accuracy(tcode, column_classes(b.object_ids, b.classes, P)), 4)
    out["recon_bce"] = round(rec, 4)
    if a.picture:  # the level the islands match better: objects or parts
        level = "part" if out["centre"]["part_ari"] > out["centre"]["object_ari"] else "object"
        picture(a.picture, b, tobj if level == "object" else tpart, tvotes, tc,
                out["centre"][f"{level}_cut_px"], level)
    return out


def picture(path: Path, b: PartsBatch, ids: torch.Tensor, votes: torch.Tensor,
            centre: torch.Tensor, cut: float, level: str, n: int = 4) -> None:
    """For the first n test images: the image with every foreground column's vote (a line
    from the column to where it votes), the true objects or parts (`ids`, `level`), and the
    islands of the settled centres (average linkage at `cut` pixels). Colours are labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import fcluster, linkage

    cent = patch_centres().numpy()
    fig, axes = plt.subplots(n, 3, figsize=(9, 2.3 * n))
    for i in range(n):
        fg = (ids[i] > 0).numpy()
        v = votes[i].numpy()[fg]
        islands = fcluster(linkage(centre[i].numpy()[fg], "average"), cut, "distance")
        ax = axes[i, 0]
        ax.imshow(b.images[i, 0], cmap="gray_r", extent=(0, W, H, 0))
        for (x0, y0), (x1, y1) in zip(cent[fg], v, strict=True):
            ax.plot([x0, x1], [y0, y1], color="tab:red", lw=0.5, alpha=0.5)
        ax.scatter(v[:, 0], v[:, 1], s=4, color="tab:red")
        for ax, truth, title in ((axes[i, 1], ids[i].numpy(), f"true {level}s"),
                                 (axes[i, 2], None, f"islands (votes settled, cut {cut:g} px)")):
            label_panel(ax, fg, truth[fg] if truth is not None else islands,
                        (H // P, W // P), (H, W))
            if i == 0:
                ax.set_title(title, fontsize=9)
        if i == 0:
            axes[i, 0].set_title("image and each column's vote", fontsize=9)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ambiguity", type=float)
    ap.add_argument("steps", type=int)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--density", type=float, default=0.0)
    ap.add_argument("--density-sigma", type=float, default=2.0)
    ap.add_argument("--noise", type=float, default=0.0,
                    help="training only: Gaussian noise (pixels) on every vote's centre, and "
                         "noise / 2 on its class logits, before the islands settle")
    ap.add_argument("--oracle", action="store_true",
                    help="the right answer's votes (true object centres and classes); "
                         "only the field learns: the reconstruction the objective gives it")
    ap.add_argument("--lam", type=float, default=0.0,
                    help="with --density: lam x squared offset (glom_votes.py's prior)")
    ap.add_argument("--train-layout", default="touching", choices=("touching", "strips"),
                    help="the training images' layout (the test images are always touching)")
    ap.add_argument("--init", type=Path, help="start from this script's saved nets")
    ap.add_argument("--below", type=Path,
                    help="a second level: draw this saved (frozen) net's settled votes, "
                         "not pixels")
    ap.add_argument("--no-field", action="store_true",
                    help="the ablation: the density (and lam) terms alone, no drawing")
    ap.add_argument("--ramp", action="store_true", help="density weight from 0 up to --density")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--picture", type=Path, help="with the final measure: save a PNG here")
    ap.add_argument("--measure", type=Path,
                    help="only measure this script's saved nets (final_measure) and stop")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    vnet, cent = vote_net(a.k), patch_centres()
    fnet = field_net(a.k, a.k + 2 if a.below else P * P)  # mortal.arch.glom_votes' nets
    draw = drawer(a, cent)
    if a.measure or a.init:
        saved = torch.load(a.measure or a.init)
        vnet.load_state_dict(saved["vote"])
        fnet.load_state_dict(saved["field"])
    if a.measure:
        print(json.dumps({"measured": str(a.measure), **final_measure(vnet, fnet, cent, a, draw)}))
        return
    opt = torch.optim.Adam([*vnet.parameters(), *fnet.parameters()], a.lr)
    test = make_parts(96, 999, a.ambiguity, layout="touching")
    obj, part = column_ids(test.object_ids, P), column_ids(test.part_ids, P)
    cuts = (2.0, 4.0, 8.0)

    def test_islands() -> tuple[dict, float]:
        with torch.no_grad():
            fg = obj > 0
            _, c, code = forward(vnet, test, fg, cent, a)
            rec = draw(fnet, c, code, test, fg).item()
            return measure(embedding(c, code, a.beta), obj, part, cuts), rec

    untrained, rec0 = test_islands()
    print("untrained", round(rec0, 4), untrained, flush=True)
    t0 = time.time()
    for step in range(a.steps):
        b = make_parts(a.batch, 1000 + step, a.ambiguity, layout=a.train_layout)
        fg = column_ids(b.object_ids, P) > 0
        votes, centre, code = forward(vnet, b, fg, cent, a, a.noise)
        loss = draw(fnet, centre, code, b, fg) \
            if not a.no_field else torch.zeros(())
        if a.density:  # pull each vote towards its image's other votes (glom_votes.py's loss)
            weight = a.density * (step / a.steps if a.ramp else 1.0)
            loss = loss + weight * vote_loss(votes, fg, cent, a.density_sigma, a.lam)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == a.steps - 1:
            isl, rec = test_islands()
            print(step, round(loss.item(), 4), round(rec, 4), round(time.time() - t0), isl,
                  flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    tag = (f"{a.ambiguity}_k{a.k}_s{a.sigma}_b{a.beta}_i{a.iters}_d{a.density}"
           f"{'r' if a.ramp else ''}_n{a.noise}_l{a.lam}{'_oracle' if a.oracle else ''}"
           f"_{a.train_layout}{'_init' if a.init else ''}{'_above' if a.below else ''}"
           f"{'_nofield' if a.no_field else ''}_seed{a.seed}")
    torch.save({"vote": vnet.state_dict(), "field": fnet.state_dict()},
               a.out / f"glom_generative_{tag}.pt")
    trained, rec = test_islands()
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()
                if k != "out"}
    print(json.dumps({**settings, "seconds": round(time.time() - t0, 1),
                      "untrained": untrained, "untrained_recon_bce": round(rec0, 4),
                      "trained": trained, "recon_bce": round(rec, 4),
                      "recipe_images": final_measure(vnet, fnet, cent, a, draw)}))


if __name__ == "__main__":
    main()
