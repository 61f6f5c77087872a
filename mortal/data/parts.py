"""A synthetic part-whole world with ground truth, for GLOM (like eGLOM's "Ellipse World").

Each image holds `n_objects` objects side by side; each object is three filled ellipses (its
parts) in a class-specific arrangement. Two layouts: "strips" puts object k in the k-th
vertical strip of the image, with background between the objects (object identity follows
from connected regions of foreground); "touching" puts the objects in a row at random
horizontal gaps of -TOUCH_OVERLAP..0 pixels between their bounding boxes (touching or partly
overlapping: the later object hides the earlier where they overlap) and random vertical
offsets, so where one object ends and the next begins must be read from the parts' shapes and
arrangement. There are three part shapes (round, flat, tall). With
`ambiguity` a in [0, 1] every part's semi-axes move a fraction a of the way to one shared
circle, so at a = 1 a part alone says nothing about what it is: only its place among the other
parts (the context) does. Parts never overlap (the templates leave gaps at every ambiguity),
so every foreground pixel belongs to exactly one part and one object.

Everything is generated on the fly and deterministically from a seed (no files):
  images        float32 (N, 1, H, W) in [0, 1]  (1 inside a part, 0 elsewhere)
  part_ids      int64 (N, H, W)  0 background, 1..3*n_objects the part instance
  part_types    int64 (N, H, W)  -1 background, else 0 round, 1 flat, 2 tall
  object_ids    int64 (N, H, W)  0 background, 1..n_objects the object instance
  classes       int64 (N, n_objects)  the class of each object
`column_ids` turns pixel ids into one id per patch (GLOM's columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Part shapes: semi-axes (a along x, b along y) in pixels.
PART_SHAPES = ((3.0, 3.0), (6.0, 2.5), (2.5, 6.0))
PART_NAMES = ("round", "flat", "tall")
COMMON_RADIUS = 3.0  # the shape every part tends to as ambiguity -> 1
# Object classes: three parts each, (dx, dy, part shape) relative to the object's centre.
TEMPLATES = (
    ((-5.0, -5.0, 0), (5.0, -5.0, 0), (0.0, 6.0, 1)),  # face: two eyes over a mouth
    ((0.0, -6.5, 1), (-5.0, 5.0, 2), (5.0, 5.0, 2)),  # table: a top over two legs
    ((0.0, -8.0, 1), (0.0, 0.0, 1), (0.0, 8.0, 1)),  # ladder: three rungs stacked
    ((-8.0, 0.0, 2), (0.0, 0.0, 0), (8.0, 0.0, 2)),  # row: tall, round, tall side by side
)
CLASS_NAMES = ("face", "table", "ladder", "row")
SCALE_JITTER = 0.1  # each part's size varies by up to +-10 %
HALF = 12  # an object fits in a (2 * HALF)-pixel square around its centre
LAYOUTS = ("strips", "touching")
TOUCH_OVERLAP = 3.0  # "touching": neighbouring objects' boxes overlap by up to this many pixels
TOUCH_SHIFT = 5.0  # "touching": vertical offset of each object's centre, up to +- this


def half_extent(cls: int) -> tuple[float, float]:
    """(x, y) half-size of a class's bounding box at its largest (any ambiguity, full jitter)."""
    hx = hy = 0.0
    for dx, dy, shape in TEMPLATES[cls]:
        for amb in (0.0, 1.0):
            a, b = part_axes(shape, amb)
            hx = max(hx, abs(dx) + a * (1 + SCALE_JITTER))
            hy = max(hy, abs(dy) + b * (1 + SCALE_JITTER))
    return hx, hy


@dataclass(frozen=True)
class PartsBatch:
    """Rendered images and their ground truth at every pixel (see the module docstring)."""

    images: torch.Tensor
    part_ids: torch.Tensor
    part_types: torch.Tensor
    object_ids: torch.Tensor
    classes: torch.Tensor


def part_axes(shape: int, ambiguity: float) -> tuple[float, float]:
    """Semi-axes of a part shape at `ambiguity`: the template moved towards the common circle."""
    a, b = PART_SHAPES[shape]
    return ((1 - ambiguity) * a + ambiguity * COMMON_RADIUS,
            (1 - ambiguity) * b + ambiguity * COMMON_RADIUS)


def make_parts(n: int, seed: int, ambiguity: float = 0.0, height: int = 48, width: int = 64,
               n_objects: int = 2, layout: str = "strips") -> PartsBatch:
    """`n` images of `n_objects` objects each, deterministic from `seed`; the class of each
    object is uniform.

    layout "strips": object k lives in the k-th vertical strip of the image (width / n_objects
    pixels), at a random centre that keeps its whole box inside the strip. layout "touching":
    the objects stand in a row, each box overlapping the previous one's by 0..TOUCH_OVERLAP
    pixels, the row at a random place that keeps it inside the image (see the module
    docstring)."""
    if not 0.0 <= ambiguity <= 1.0:
        raise ValueError(f"ambiguity must be in [0, 1], not {ambiguity}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    strip = width // n_objects
    if layout == "strips" and (strip < 2 * HALF or height < 2 * HALF):
        raise ValueError(f"each object needs a {2 * HALF}x{2 * HALF} box: image {height}x{width} "
                         f"with {n_objects} objects leaves {height}x{strip}")
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(len(TEMPLATES), (n, n_objects), generator=g)
    cx = torch.rand(n, n_objects, generator=g) * (strip - 2 * HALF) + HALF
    cx = cx + torch.arange(n_objects) * strip
    cy = torch.rand(n, n_objects, generator=g) * (height - 2 * HALF) + HALF
    scale = 1 + SCALE_JITTER * (2 * torch.rand(n, n_objects, 3, generator=g) - 1)
    if layout == "touching":
        cx, cy = touching_centres(classes, height, width, g)

    ys = torch.arange(height, dtype=torch.float32).view(1, height, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, width) + 0.5
    part_ids = torch.zeros(n, height, width, dtype=torch.long)
    part_types = torch.full((n, height, width), -1, dtype=torch.long)
    object_ids = torch.zeros(n, height, width, dtype=torch.long)
    for k in range(n_objects):
        for p in range(3):
            # template table (classes, 3): dx, dy, shape of part p of each image's object k
            t = torch.tensor([TEMPLATES[c][p] for c in range(len(TEMPLATES))])[classes[:, k]]
            axes = torch.tensor([part_axes(int(s), ambiguity) for s in t[:, 2]])
            a = (axes[:, 0] * scale[:, k, p]).view(n, 1, 1)
            b = (axes[:, 1] * scale[:, k, p]).view(n, 1, 1)
            px = (cx[:, k] + t[:, 0]).view(n, 1, 1)
            py = (cy[:, k] + t[:, 1]).view(n, 1, 1)
            inside = ((xs - px) / a) ** 2 + ((ys - py) / b) ** 2 <= 1.0  # (n, H, W)
            part_ids[inside] = 1 + 3 * k + p
            part_types[inside] = t[:, 2].long().view(n, 1, 1).expand_as(inside)[inside]
            object_ids[inside] = 1 + k
    images = (part_ids > 0).float().unsqueeze(1)
    return PartsBatch(images, part_ids, part_types, object_ids, classes)


def touching_centres(classes: torch.Tensor, height: int, width: int, g: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, K) classes -> centres (cx, cy), each (n, K), of K objects in a row whose bounding
    boxes touch or overlap by up to TOUCH_OVERLAP pixels, shifted vertically by up to
    TOUCH_SHIFT, the whole row placed at random inside the image."""
    n, k = classes.shape
    ext = torch.tensor([half_extent(c) for c in range(len(TEMPLATES))])[classes]  # (n, K, 2)
    overlap = torch.rand(n, k, generator=g) * TOUCH_OVERLAP
    shift = (2 * torch.rand(n, k, generator=g) - 1) * TOUCH_SHIFT
    hx, hy = ext[..., 0], ext[..., 1]
    cx = torch.zeros(n, k)
    for j in range(1, k):
        cx[:, j] = cx[:, j - 1] + hx[:, j - 1] + hx[:, j] - overlap[:, j]
    lo, hi = (cx - hx).min(1).values, (cx + hx).max(1).values  # the row's extent
    room = (width - (hi - lo)).clamp_min(0)
    cx = cx - lo.unsqueeze(1) + (torch.rand(n, generator=g) * room).unsqueeze(1)
    top = (shift - hy).min(1).values
    bottom = (shift + hy).max(1).values
    room_y = (height - (bottom - top)).clamp_min(0)
    cy = shift - top.unsqueeze(1) + (torch.rand(n, generator=g) * room_y).unsqueeze(1)
    if bool(((cx + hx) > width + 1e-4).any() or ((cy + hy) > height + 1e-4).any()):
        raise ValueError(f"{k} touching objects do not fit in a {height}x{width} image")
    return cx, cy


def column_ids(ids: torch.Tensor, patch: int, min_fg: float = 0.25) -> torch.Tensor:
    """(N, H, W) pixel ids (0 = background) -> (N, H/patch * W/patch) one id per patch,
    row-major: the most common non-zero id when at least a fraction `min_fg` of the patch's
    pixels are non-zero (ties go to the smaller id), else 0."""
    n, h, w = ids.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not a whole number of {patch}-pixel patches")
    # (N, H/p, p, W/p, p) -> (N, H/p, W/p, p*p): the pixels of each patch in the last dim
    blocks = ids.view(n, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4)
    blocks = blocks.reshape(n, (h // patch) * (w // patch), patch * patch)
    k = int(ids.max()) + 1 if ids.numel() else 1
    counts = torch.nn.functional.one_hot(blocks.clamp_min(0), k).sum(2)  # (N, cols, k)
    fg = counts[..., 1:]
    best = fg.argmax(2) + 1
    return torch.where(fg.sum(2) >= min_fg * patch * patch, best, torch.zeros_like(best))


def column_classes(object_ids: torch.Tensor, classes: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, H, W) pixel object ids and (N, n_objects) their classes -> (N, columns) the class of
    the object each patch shows (by `column_ids`), -1 for background: per-column labels."""
    obj = column_ids(object_ids, patch)
    cls = classes.gather(1, (obj - 1).clamp_min(0))
    return torch.where(obj > 0, cls, torch.full_like(cls, -1))


def max_overlap_free_scale() -> float:
    """The largest size factor at which no two parts of any template touch at any ambiguity
    (checked by the tests against SCALE_JITTER): the smallest gap ratio over all part pairs."""
    worst = math.inf
    for template in TEMPLATES:
        for i in range(3):
            for j in range(i + 1, 3):
                (x1, y1, s1), (x2, y2, s2) = template[i], template[j]
                for amb in (0.0, 0.25, 0.5, 0.75, 1.0):
                    a1, b1 = part_axes(s1, amb)
                    a2, b2 = part_axes(s2, amb)
                    # separating axis along x or y, enough for these axis-aligned layouts
                    gx = abs(x1 - x2) / (a1 + a2) if x1 != x2 else 0.0
                    gy = abs(y1 - y2) / (b1 + b2) if y1 != y2 else 0.0
                    worst = min(worst, max(gx, gy))
    return worst
