"""glom-parts: GLOM (Hinton 2021) on a synthetic part-whole world with ground truth.

Hinton's GLOM paper describes an imaginary system and reports no numbers. The targets here are
the issue's: islands of agreement that match the true parts at a low level (ARI >= 0.8) and the
true objects at a high level (ARI >= 0.9), and object classification from the top level above
a numpy eGLOM-lite's 99 / 92 / 93 % at ambiguity 0 / 0.5 / 0.8 (a supervised model given
each ellipse's parameters: a reference, not a like-for-like number). The data is
mortal.data.parts: two objects per 48x64 image, three ellipse parts each, four classes; by
default the objects touch or overlap (layout "touching"; "strips" keeps them apart).

One GLOM learns on batches drawn at every ambiguity in turn (new images each step, so there
is no overfitting to a training set). Then, per ambiguity, on fresh test images:
  ARI per level  each image's foreground columns clustered (average linkage on cosine, the
                 threshold per level picked on separate validation images) against the true
                 parts and objects, averaged over images
  classification a linear softmax on each object's mean top-level embedding (over its true
                 columns), trained on other images' objects: labels reach only the probe
mode=supervised (the like-for-like eGLOM-lite comparison) is backprop through the iterations
of a cross-entropy at every object column of the top level, each naming its object's class.
Every measure is also taken for the same GLOM with its initial (random) nets, and results.json
holds both and their difference per level (learning_gain_per_ambiguity).
Pictures: every level, every iteration, PCA to RGB with island boundaries (PNG and GIF).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from mortal import distributed
from mortal.arch.glom import Glom, GlomSpec, column_distances
from mortal.config import check
from mortal.data.parts import column_classes, column_ids, make_parts
from mortal.loop import device_of, resolve_dtype, seed_everything
from mortal.recipes import Recipe, register
from mortal.recipes.common import standard_results
from mortal.rules import ff
from mortal.rules import glom as rule_mod

TARGETS = {"part_ari": 0.8, "object_ari": 0.9}
EGLOM_LITE_ACCURACY = {0.0: 99.0, 0.5: 92.0, 0.8: 93.0}


@dataclass
class Config:
    """GLOM's shape, how it learns, and how it is measured; --set changes any."""

    mode: Literal["local", "paper", "supervised"] = "local"
    layout: Literal["strips", "touching"] = "touching"  # objects apart, or touching/overlapping
    ambiguities: tuple[float, ...] = (0.0, 0.5, 0.8)
    # the net
    patch: int = 4
    context: int = 1
    n_levels: int = 4
    dim: int = 64
    hidden: int = 128
    pos_freqs: int = 4
    weights: tuple[float, ...] = (1.0, 0.3, 0.3, 3.0)  # previous, bottom-up, top-down, attention
    beta: float = 3.0
    top_beta: float = 0.0  # the top level's attention inverse temperature (0 = beta)
    pos_scale: float = 1.0  # amplitude of the position code (bottom-up of level 0, top-down)
    radius: tuple[float, ...] = (1.0, 1.5, 2.5, 3.5)
    iterations: int = 10  # per training step
    eval_iterations: int = 20  # when measuring and drawing
    # learning
    epochs: int = 2
    steps_per_epoch: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    tau: float = 0.1
    far_negatives: bool = True  # InfoNCE also against the image's columns outside the window
    # per level: the far negatives are the columns farther than this (empty: outside the
    # level's attention window)
    far_radius: tuple[float, ...] = ()
    # measured better (docs/glom.md, second session): losses on inked columns only, and
    # InfoNCE negatives from the same image's far columns only, not other images
    ink_only: bool = True  # local losses averaged over the columns with ink only
    image_negatives: bool = False  # InfoNCE against other images' same column (else far only)
    top_image_negatives: bool = False  # the top level's bottom-up loss with other images anyway
    views: int = 1  # 2: two shifted views of each image, each taught by the other's consensus
    shift: int = 2  # pixels, for views = 2
    # views = 2: roll the second view by up to this many whole columns (wrapping) and match
    # columns by content, so position cannot solve the local loss (0: views line up)
    shift_columns: int = 0
    view_mask: float = 0.0  # views = 2: fraction of columns hidden in each view
    # local mode, one view: weight of the FF goodness term (each bottom-up prediction long for
    # real images, short for hybrid negatives; GlomRule.goodness_weight); > 0 also makes the
    # update read only the bottom-up predictions' direction (GlomSpec.unit_bottom_up)
    goodness_weight: float = 0.0
    goodness_temperature: float = 1.0
    residual_bottom_up: bool = False  # levels 1.. predict their input plus a learned change
    target_beta: float = 0.0  # local mode: the targets' attention inverse temperature (0: beta)
    contrast_weight: float = 0.1
    mask_frac: float = 0.25
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bf16 if native
    # measuring
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
    n_val: int = 32
    n_test: int = 96
    n_probe_train: int = 300
    probe_epochs: int = 500  # 100 underfits (raw-pixel probe: 96 % train at 500, 84 % at 100)
    n_pictures: int = 3
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype, self.device)

    def validate(self) -> list[str]:
        p: list[str] = []
        check(all(0 <= a <= 1 for a in self.ambiguities) and len(self.ambiguities) > 0,
              "ambiguities must be values in [0, 1]", p)
        check(len(self.radius) == self.n_levels, "radius needs one value per level", p)
        check(len(self.weights) == 4 and all(w >= 0 for w in self.weights),
              "weights are 4 values >= 0: previous, bottom-up, top-down, attention", p)
        check(self.epochs >= 1 and self.steps_per_epoch >= 1 and self.batch_size >= 2,
              "epochs, steps_per_epoch >= 1 and batch_size >= 2 (InfoNCE needs negatives)", p)
        check(self.iterations >= 1 and self.eval_iterations >= 1, "iterations must be >= 1", p)
        check(self.lr > 0 and self.tau > 0 and self.beta > 0, "lr, tau, beta must be > 0", p)
        check(self.top_beta >= 0, "top_beta must be >= 0 (0: the top level uses beta)", p)
        check(self.pos_scale >= 0, "pos_scale must be >= 0", p)
        check(0 < self.mask_frac < 1, "mask_frac must be in (0, 1)", p)
        check(self.views in (1, 2) and self.shift >= 0, "views is 1 or 2; shift >= 0", p)
        check(self.shift_columns >= 0 and (self.shift_columns == 0 or self.views == 2),
              "shift_columns must be >= 0, and > 0 only with views=2", p)
        check(0 <= self.view_mask < 1 and (self.view_mask == 0 or self.views == 2),
              "view_mask must be in [0, 1), and > 0 only with views=2", p)
        check(self.target_beta >= 0, "target_beta must be >= 0 (0: the model's beta)", p)
        check(self.goodness_weight >= 0 and self.goodness_temperature > 0,
              "goodness_weight must be >= 0 and goodness_temperature > 0", p)
        check(self.goodness_weight == 0 or (self.mode == "local" and self.views == 1),
              "goodness_weight > 0 needs mode=local and views=1", p)
        check(len(self.far_radius) in (0, self.n_levels) and all(r >= 0 for r in self.far_radius),
              "far_radius is empty (the attention windows) or one value >= 0 per level", p)
        check(self.image_negatives or self.far_negatives,
              "InfoNCE needs negatives: image_negatives or far_negatives (or both)", p)
        check(self.n_val >= 1 and self.n_test >= 1 and self.n_probe_train >= 8
              and self.probe_epochs >= 1,
              "n_val, n_test >= 1, n_probe_train >= 8 and probe_epochs >= 1", p)
        check(len(self.thresholds) > 0 and all(-1 <= t <= 1 for t in self.thresholds),
              "thresholds are cosines in [-1, 1]", p)
        return p


def spec_of(cfg: Any, image: tuple[int, int, int]) -> GlomSpec:
    """The GlomSpec a config describes (shared by the GLOM recipes)."""
    return GlomSpec(image=image, patch=cfg.patch, context=cfg.context, n_levels=cfg.n_levels,
                    dim=cfg.dim, hidden=cfg.hidden, pos_freqs=cfg.pos_freqs,
                    weights=tuple(cfg.weights), beta=cfg.beta, radius=tuple(cfg.radius),
                    top_beta=getattr(cfg, "top_beta", 0.0),
                    pos_scale=getattr(cfg, "pos_scale", 1.0),
                    unit_bottom_up=getattr(cfg, "goodness_weight", 0.0) > 0,
                    residual_bottom_up=getattr(cfg, "residual_bottom_up", False))


def rule_of(cfg: Any, n_classes: int) -> rule_mod.GlomRule:
    """The GlomRule a config describes (shared by the GLOM recipes)."""
    return rule_mod.GlomRule(mode=cfg.mode, iterations=cfg.iterations, lr=cfg.lr, tau=cfg.tau,
                             contrast_weight=cfg.contrast_weight, mask_frac=cfg.mask_frac,
                             far_negatives=cfg.far_negatives,
                             far_radius=tuple(getattr(cfg, "far_radius", ())),
                             ink_only=getattr(cfg, "ink_only", False),
                             image_negatives=getattr(cfg, "image_negatives", True),
                             top_image_negatives=getattr(cfg, "top_image_negatives", False),
                             views=cfg.views, shift=cfg.shift,
                             rotate=getattr(cfg, "rotate", 0.0),
                             scale=getattr(cfg, "scale", 0.0),
                             shift_columns=getattr(cfg, "shift_columns", 0),
                             view_mask=getattr(cfg, "view_mask", 0.0),
                             goodness_weight=getattr(cfg, "goodness_weight", 0.0),
                             goodness_temperature=getattr(cfg, "goodness_temperature", 1.0),
                             target_beta=getattr(cfg, "target_beta", 0.0),
                             n_classes=n_classes, dtype=cfg.dtype)


# --- pictures ---------------------------------------------------------------------------------


def pca_rgb(e: np.ndarray) -> np.ndarray:
    """(..., D) embeddings -> (..., 3) colours in [0, 1]: the top three principal components,
    each scaled to its range (one PCA for all the given vectors, so colours compare)."""
    flat = e.reshape(-1, e.shape[-1]).astype(np.float64)
    flat = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    pc = flat @ vt[:3].T
    if pc.shape[1] < 3:
        pc = np.pad(pc, ((0, 0), (0, 3 - pc.shape[1])))
    lo, hi = pc.min(0), pc.max(0)
    return ((pc - lo) / np.maximum(hi - lo, 1e-9)).reshape(*e.shape[:-1], 3)


def level_tile(rgb: np.ndarray, e: np.ndarray, grid: tuple[int, int], threshold: float,
               cell: int) -> np.ndarray:
    """One level at one iteration -> (gh*cell, gw*cell, 3) uint8: rgb (N, 3) colour per
    column, dark lines between neighbouring columns whose embeddings e (N, D) are less similar
    than `threshold` (island edges)."""
    gh, gw = grid
    img = np.kron(rgb.reshape(gh, gw, 3), np.ones((cell, cell, 1)))
    u = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    u = u.reshape(gh, gw, -1)
    right = (u[:, :-1] * u[:, 1:]).sum(-1) < threshold  # (gh, gw-1) edge after column x
    down = (u[:-1] * u[1:]).sum(-1) < threshold
    for y, x in zip(*np.nonzero(right), strict=True):
        img[y * cell:(y + 1) * cell, (x + 1) * cell - 1:(x + 1) * cell + 1] = 0.0
    for y, x in zip(*np.nonzero(down), strict=True):
        img[(y + 1) * cell - 1:(y + 1) * cell + 1, x * cell:(x + 1) * cell] = 0.0
    return (img * 255).astype(np.uint8)


def island_frames(image: np.ndarray, hist: np.ndarray, grid: tuple[int, int],
                  thresholds: list[float], cell: int = 8) -> list[np.ndarray]:
    """One frame per iteration: the input image, then every level left to right.

    image (C, H, W) in [0, 1]; hist (T+1, L, N, D) states -> T+1 uint8 (h, w, 3) frames. Each
    level has one PCA over all its iterations, so a colour means the same in every frame."""
    gh, gw = grid
    pic = image.mean(0)
    reps = max(1, (gh * cell) // pic.shape[0])
    pic = np.kron(pic, np.ones((reps, reps)))
    canvas = np.zeros((gh * cell, gw * cell, 3), dtype=np.uint8)
    ph, pw = min(pic.shape[0], gh * cell), min(pic.shape[1], gw * cell)
    canvas[:ph, :pw] = (pic[:ph, :pw, None] * 255).astype(np.uint8)
    gap = np.full((gh * cell, 4, 3), 255, dtype=np.uint8)
    n_levels = hist.shape[1]
    rgb = [pca_rgb(hist[:, lvl]) for lvl in range(n_levels)]  # each (T+1, N, 3)
    frames = []
    for t in range(hist.shape[0]):
        row = [canvas]
        for lvl in range(n_levels):
            row += [gap, level_tile(rgb[lvl][t], hist[t, lvl], grid, thresholds[lvl], cell)]
        frames.append(np.concatenate(row, 1))
    return frames


def save_pictures(out_dir: Any, stem: str, images: np.ndarray, hists: np.ndarray,
                  grid: tuple[int, int], thresholds: list[float], cell: int = 8) -> list[str]:
    """For each chosen image: a PNG grid (rows = iterations, then every level) and an animated
    GIF of the iterations. Returns the file names written."""
    from PIL import Image

    names = []
    for i in range(len(images)):
        frames = island_frames(images[i], hists[i], grid, thresholds, cell)
        sep = np.full((4, frames[0].shape[1], 3), 255, dtype=np.uint8)
        grid_img = np.concatenate([x for f in frames for x in (f, sep)][:-1], 0)
        png, gif = f"{stem}_{i}.png", f"{stem}_{i}.gif"
        Image.fromarray(grid_img).save(out_dir / png)
        pil = [Image.fromarray(f) for f in frames]
        pil[0].save(out_dir / gif, save_all=True, append_images=pil[1:], duration=600, loop=0)
        names += [png, gif]
    return names


# --- measuring --------------------------------------------------------------------------------


def object_features(e_top: torch.Tensor, obj_cols: torch.Tensor, n_objects: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D) top level, (B, N) object ids -> ((B * n_objects, D) mean embedding over each
    object's columns, (B * n_objects,) bool: the object has at least one column)."""
    onehot = torch.nn.functional.one_hot(obj_cols, n_objects + 1)[..., 1:].float()  # (B, N, K)
    sums = torch.einsum("bnk,bnd->bkd", onehot, e_top.float())
    counts = onehot.sum(1)  # (B, K)
    feats = sums / counts.clamp_min(1).unsqueeze(-1)
    return feats.reshape(-1, e_top.shape[-1]), (counts > 0).reshape(-1)


def best_thresholds(e: torch.Tensor, ids: torch.Tensor, grid: tuple[float, ...]
                    ) -> tuple[list[float], list[float]]:
    """Per level, the threshold of `grid` with the highest ARI against `ids` (and that ARI)."""
    scores = np.stack([rule_mod.level_ari(e, ids, t) for t in grid])  # (thresholds, L)
    best = scores.argmax(0)
    return [grid[i] for i in best], [float(scores[i, lvl]) for lvl, i in enumerate(best)]


# mean distances (in columns) at which the position baseline stops merging clusters
POSITION_CUTS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)


def position_ari(ids: torch.Tensor, grid: tuple[int, int], cut: float) -> float:
    """(B, N) column ids (0 = background) -> the ARI, averaged over images, of islands made
    from where the columns are and nothing else: average linkage on Euclidean distance
    between foreground columns, merging while the mean distance is at most `cut` columns."""
    dist = column_distances(grid).numpy()
    total = 0.0
    for row in ids.cpu().numpy():
        fg = row > 0
        labels = rule_mod.cluster_similarity(-dist[np.ix_(fg, fg)], -cut)
        total += rule_mod.adjusted_rand_index(labels, row[fg])
    return total / len(ids)


def eval_seed(cfg: Any, k: int) -> int:
    """The seed of the k-th ambiguity's evaluation images (`split`)."""
    return 10_000 * (k + 1) + cfg.seed


def split(cfg: Any, amb: float, seed: int, n: int, part: int) -> Any:
    """The evaluation images: part 1 validation, 2 test, 3 the probe's training objects."""
    return make_parts(n, seed + part, amb, layout=cfg.layout)


def position_baseline(cfg: Any, amb: float, seed: int, grid: tuple[int, int]
                      ) -> dict[str, float]:
    """The islands a net that knew only where each column is would form: part and object ARI
    on `evaluate`'s test images (same seed), each with its cut chosen on its validation
    images. A GLOM's ARI means something only above this."""
    val, test = split(cfg, amb, seed, cfg.n_val, 1), split(cfg, amb, seed, cfg.n_test, 2)
    out: dict[str, float] = {}
    for what, key in (("part", "part_ids"), ("object", "object_ids")):
        val_ids = column_ids(getattr(val, key), cfg.patch)
        cut = max(POSITION_CUTS, key=lambda c: position_ari(val_ids, grid, c))
        out[f"{what}_ari"] = round(
            position_ari(column_ids(getattr(test, key), cfg.patch), grid, cut), 4)
        out[f"{what}_cut_columns"] = cut
    return out


def evaluate(model: Glom, cfg: Config, amb: float, device: torch.device, seed: int
             ) -> dict[str, Any]:
    """Per-level ARI (parts, objects) and top-level object classification at one ambiguity.

    Thresholds per level, and the level reported as the part (object) level, are chosen on
    validation images; the ARIs reported are on separate test images."""
    p, it = cfg.patch, cfg.eval_iterations
    val, test = split(cfg, amb, seed, cfg.n_val, 1), split(cfg, amb, seed, cfg.n_test, 2)
    probe = split(cfg, amb, seed, cfg.n_probe_train, 3)
    e_val = rule_mod.states(model, val.images.to(device), it, cfg.dtype)
    e_test = rule_mod.states(model, test.images.to(device), it, cfg.dtype)
    out: dict[str, Any] = {}
    for what, key in (("part", "part_ids"), ("object", "object_ids")):
        thr, val_ari = best_thresholds(e_val, column_ids(getattr(val, key), p), cfg.thresholds)
        ids = column_ids(getattr(test, key), p)
        ari = [float(rule_mod.level_ari(e_test[:, lvl:lvl + 1], ids, t)[0])
               for lvl, t in enumerate(thr)]
        level = int(np.argmax(val_ari))
        out[f"{what}_ari_per_level"] = [round(a, 4) for a in ari]
        out[f"{what}_thresholds"] = thr
        out[f"{what}_level"] = level
        out[f"{what}_ari"] = round(ari[level], 4)
    # classification: a linear softmax on each object's mean embedding, per level (the top
    # level is the one reported; the others say where the class is readable)
    e_probe = rule_mod.states(model, probe.images.to(device), it, cfg.dtype)
    n_obj = probe.classes.shape[1]
    acc = []
    for lvl in range(cfg.n_levels):
        f_tr, ok_tr = object_features(e_probe[:, lvl],
                                      column_ids(probe.object_ids, p).to(device), n_obj)
        f_te, ok_te = object_features(e_test[:, lvl], column_ids(test.object_ids, p).to(device),
                                      n_obj)
        y_tr = probe.classes.reshape(-1).to(device)
        y_te = test.classes.reshape(-1).to(device)
        acc.append(probe_accuracy(f_tr[ok_tr], y_tr[ok_tr], f_te[ok_te], y_te[ok_te], cfg))
    out["classification_accuracy_pct_per_level"] = acc
    out["position_share_per_level"] = position_share(
        e_probe, column_ids(probe.object_ids, p).to(device) > 0)
    out["classification_accuracy_pct"] = acc[-1]
    # the same probe on the objects' mean raw pixel windows (what level 0 reads): no GLOM
    f_tr, ok_tr = object_features(model.columns(probe.images.to(device)),
                                  column_ids(probe.object_ids, p).to(device), n_obj)
    f_te, ok_te = object_features(model.columns(test.images.to(device)),
                                  column_ids(test.object_ids, p).to(device), n_obj)
    out["pixel_probe_accuracy_pct"] = probe_accuracy(f_tr[ok_tr], y_tr[ok_tr], f_te[ok_te],
                                                     y_te[ok_te], cfg)
    out["test_images"] = test.images[:cfg.n_pictures]
    return out


def position_share(e: torch.Tensor, fg: torch.Tensor, min_count: int = 3) -> list[float]:
    """(B, L, N, D) states, (B, N) bool foreground -> per level, the share of the variance of
    the foreground columns' embeddings (across images) explained by *which column* they are:
    between-column variance / total. 1: the level says where a column is and nothing about
    what is there; about 0: nothing about where. Columns with fewer than `min_count`
    foreground samples are left out."""
    m = fg.float().unsqueeze(-1)  # (B, N, 1)
    count = m.sum(0)  # (N, 1)
    keep = fg & (count[:, 0] >= min_count).unsqueeze(0)
    out = []
    for lvl in range(e.shape[1]):
        x = e[:, lvl].float()
        per_col = (x * m).sum(0) / count.clamp_min(1)  # (N, D) mean over images
        xs, mus = x[keep], per_col.unsqueeze(0).expand_as(x)[keep]
        total = ((xs - xs.mean(0)) ** 2).sum()
        between = ((mus - xs.mean(0)) ** 2).sum()
        out.append(round(float(between / total.clamp_min(1e-12)), 4))
    return out


def probe_accuracy(f_tr: torch.Tensor, y_tr: torch.Tensor, f_te: torch.Tensor,
                   y_te: torch.Tensor, cfg: Config) -> float:
    """Test accuracy (%) of a linear softmax trained on (f_tr, y_tr) for cfg.probe_epochs."""
    head = ff.train_softmax(f_tr, y_tr, n_classes=4, epochs=cfg.probe_epochs, lr=1e-2,
                            batch_size=min(500, len(f_tr)), seed=cfg.seed)
    return round(100 - ff.error_pct(ff.softmax_predict(head, f_te), y_te), 3)


def learning_gain(trained: dict[str, Any], untrained: dict[str, Any]) -> dict[str, Any]:
    """What learning added at one ambiguity: trained minus untrained, for the reported part and
    object ARI, per level, and for the classification (top level and per level)."""
    out: dict[str, Any] = {}
    for key in ("part_ari", "object_ari", "classification_accuracy_pct"):
        out[key] = round(trained[key] - untrained[key], 4)
        per = f"{key}_per_level"
        out[per] = [round(a - b, 4) for a, b in zip(trained[per], untrained[per], strict=True)]
    return out


def table_rows(label: str, per_amb: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows of the results table for one model (trained or untrained)."""
    rows = []
    for a, ev in per_amb.items():
        ref = EGLOM_LITE_ACCURACY.get(float(a))
        rows.append(f"| {label} | {a} | {ev['part_ari']:.3f} (level {ev['part_level']}) | "
                    f"{ev['object_ari']:.3f} (level {ev['object_level']}) | "
                    f"{ev['classification_accuracy_pct']:.2f} | "
                    f"{ref if ref is not None else 'n/a'} | {ev['part_ari_per_level']} | "
                    f"{ev['object_ari_per_level']} |")
    return rows


def train(cfg: Config, run: Any) -> dict[str, Any]:
    """Train one GLOM on every ambiguity in turn; measure ARI and classification per ambiguity,
    beside the same GLOM with its initial (random) nets; draw the islands; write table.md."""
    seed_everything(cfg.seed)
    device = device_of(cfg.device)
    image = tuple(make_parts(1, 0).images.shape[1:])
    model = Glom(spec_of(cfg, image)).to(device)
    untrained = copy.deepcopy(model).eval()
    rule = rule_of(cfg, n_classes=4)
    head = rule_mod.make_head(model, rule).to(device)
    amb = cfg.ambiguities

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        pb = make_parts(cfg.batch_size, 1_000_003 * (cfg.seed + 1) + step, amb[step % len(amb)],
                        layout=cfg.layout)
        if cfg.mode == "supervised":  # every object's columns learn its class (eGLOM)
            return pb.images.to(device), column_classes(pb.object_ids, pb.classes,
                                                        cfg.patch).to(device)
        return pb.images.to(device), pb.classes[:, 0].to(device)

    rule_mod.train(model, head, batch, cfg.epochs * cfg.steps_per_epoch, rule, run,
                   log_every=cfg.steps_per_epoch, seed=cfg.seed, progress=not run.quiet)
    model.eval()
    # under data parallel, rank 0 measures and writes; the others receive its results
    return distributed.from_main(lambda: measure_and_report(model, untrained, cfg, run, device))


def measure_and_report(model: Glom, untrained: Glom, cfg: Config, run: Any,
                       device: torch.device) -> dict[str, Any]:
    """Measure the trained and the untrained nets at every ambiguity, draw the islands, write
    table.md; the recipe's results."""
    amb = cfg.ambiguities
    results: dict[str, dict[str, dict[str, Any]]] = {"trained": {}, "untrained": {}}
    figures: list[str] = []
    for name, net in (("trained", model), ("untrained", untrained)):
        for k, a in enumerate(amb):
            ev = evaluate(net, cfg, a, device, seed=eval_seed(cfg, k))
            images = ev.pop("test_images")
            results[name][f"{a:g}"] = ev
            if name == "trained" and k == len(amb) // 2 and cfg.n_pictures:
                hist = rule_mod.states(net, images.to(device), cfg.eval_iterations, cfg.dtype,
                                       history=True)
                thr = [ev["part_thresholds"][lvl] if lvl <= ev["part_level"]
                       else ev["object_thresholds"][lvl] for lvl in range(cfg.n_levels)]
                figures += save_pictures(run.dir, f"islands_amb{a:g}", images.numpy(),
                                         hist.cpu().numpy(), net.spec.grid, thr)
            if not run.quiet:
                print(f"{name}, ambiguity {a:g}: part ARI {ev['part_ari']}, object ARI "
                      f"{ev['object_ari']}, classification "
                      f"{ev['classification_accuracy_pct']} %", flush=True)
    gain = {a: learning_gain(results["trained"][a], results["untrained"][a])
            for a in results["trained"]}
    baseline = {f"{a:g}": position_baseline(cfg, a, eval_seed(cfg, k), model.spec.grid)
                for k, a in enumerate(amb)}
    lines = [f"Layout: {cfg.layout}.", "",
             "| nets | ambiguity | part ARI | object ARI | classification (%) | eGLOM-lite (%) "
             "| part ARI per level | object ARI per level |", "|---|---|---|---|---|---|---|---|"]
    lines += table_rows(f"trained ({cfg.mode})", results["trained"])
    lines += table_rows("untrained (initial nets)", results["untrained"])
    lines += [f"| position alone (no net) | {a} | {b['part_ari']:.3f} | {b['object_ari']:.3f} "
              "| | | | |" for a, b in baseline.items()]
    lines += ["", "Learning gain (trained minus untrained):", "",
              "| ambiguity | part ARI | object ARI | classification (points) | "
              "classification per level (trained) | probe on raw pixel windows (%) | "
              "position share per level, trained / untrained |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {a} | {g['part_ari']:+.3f} | {g['object_ari']:+.3f} | "
              f"{g['classification_accuracy_pct']:+.1f} | "
              f"{results['trained'][a]['classification_accuracy_pct_per_level']} | "
              f"{results['trained'][a]['pixel_probe_accuracy_pct']} | "
              f"{results['trained'][a]['position_share_per_level']} / "
              f"{results['untrained'][a]['position_share_per_level']} |"
              for a, g in gain.items()]
    lines += ["", f"Targets: part ARI >= {TARGETS['part_ari']}, object ARI >= "
              f"{TARGETS['object_ari']}. The level reported and each level's threshold are "
              f"chosen on {cfg.n_val} validation images, the ARIs measured on {cfg.n_test} test "
              f"images after {cfg.eval_iterations} iterations. Pictures: ambiguity "
              f"{amb[len(amb) // 2]:g}, rows = iterations 0..{cfg.eval_iterations}, left to "
              f"right the image then levels 0..{cfg.n_levels - 1}; dark lines = island edges. "
              "Position share: the share of the foreground columns' variance explained by "
              "which column they are (1 = the level encodes only where a column is). "
              "Position alone: the same test images' foreground columns clustered by where "
              "they are (average linkage on distance, the cut chosen on the validation "
              "images): what islands that ignore the pixels score."]
    (run.dir / "table.md").write_text("\n".join(lines) + "\n")
    trained = results["trained"]
    a0 = f"{amb[0]:g}"
    n_train = cfg.epochs * cfg.steps_per_epoch * cfg.batch_size
    return standard_results(
        RECIPE, cfg, run, n_train, 100 - trained[a0]["classification_accuracy_pct"],
        test_error_note=f"object classification error from the top level at ambiguity {a0}",
        mode=cfg.mode, layout=cfg.layout, per_ambiguity=trained,
        untrained_per_ambiguity=results["untrained"], learning_gain_per_ambiguity=gain,
        position_baseline_per_ambiguity=baseline,
        part_ari={a: ev["part_ari"] for a, ev in trained.items()},
        object_ari={a: ev["object_ari"] for a, ev in trained.items()},
        classification_accuracy_pct={a: ev["classification_accuracy_pct"]
                                     for a, ev in trained.items()},
        targets=TARGETS, eglom_lite_accuracy_pct=EGLOM_LITE_ACCURACY,
        parameters=sum(p.numel() for p in model.parameters()), dtype=cfg.dtype,
        figures=figures,
    )


RECIPE = register(Recipe(
    name="glom-parts",
    paper="Hinton 2021, How to represent part-whole hierarchies in a neural network (GLOM)",
    setting="synthetic ellipse part-whole world, 2 objects x 3 parts, 4 levels, mode=local",
    dataset="parts",
    paper_test_error_pct=1.0,
    config=Config,
    train=train,
    notes="paper_test_error_pct: a numpy eGLOM-lite's 99 % at ambiguity 0 (GLOM has none)",
    before={"layout": "strips", "ink_only": False, "image_negatives": True},  # until 11-25
))
