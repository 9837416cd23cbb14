"""Does a class query look at its object? The share of its cross-attention on the object's boxes.

The walkthrough shows a class query's attention map over an image; this module turns the
impression into a number over many images. For each (image, true class) with known boxes, the
decoder's last-layer cross-attention of that class's query ([h, w] over the feature-map tokens,
summing to 1) is weighed against how much of each token's cell the class's boxes cover:

    on_object = sum over tokens of attention * covered share of the token's cell

A query that spreads its attention evenly scores the boxes' share of the image (`chance`); one
that looks only at cells inside its object scores 1. A token stands for an equal 1/h x 1/w cell
of the image, as the walkthrough draws the map (blown up over the image). That is approximate:
at 56 px and stride 16 the 4 x 4 tokens sit on 16 px strides, the last row and column partly
over padding; and a deep token's receptive field is wider than its cell. So this measures where
a query reads, not what the backbone saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch only where a model runs: the report reads SUMMARY_FILE without it
    from torch import nn

    from mlic.data.base import MultiLabelDataset

SUMMARY_FILE = "attention_on_objects.json"  # in <results>/tables/, read by docs/results.md's block
SUBCELLS = 8  # each token cell is sampled on an 8 x 8 grid to find the share a box covers


def box_coverage(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """[h, w]: the share of each token cell covered by the union of `boxes` ([n, 4] image
    fractions x0, y0, x1, y1), sampled at cell-centred points of an 8 x 8 grid per cell."""
    ys = (np.arange(h * SUBCELLS) + 0.5) / (h * SUBCELLS)
    xs = (np.arange(w * SUBCELLS) + 0.5) / (w * SUBCELLS)
    inside = np.zeros((ys.size, xs.size), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        rows = (ys >= y0) & (ys < y1)
        cols = (xs >= x0) & (xs < x1)
        inside |= rows[:, None] & cols[None, :]
    return inside.reshape(h, SUBCELLS, w, SUBCELLS).mean(axis=(1, 3))


def attention_on_boxes(attention: np.ndarray, boxes: np.ndarray) -> tuple[float, float]:
    """(on_object, chance) for one [h, w] attention map (sums to 1) and its class's boxes."""
    coverage = box_coverage(boxes, *attention.shape)
    return float((attention * coverage).sum()), float(coverage.mean())


def attention_on_objects(
    model: nn.Module,
    dataset: MultiLabelDataset,
    *,
    max_images: int = 200,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Mean `on_object` and `chance` over every (image, true class) pair with boxes in the first
    `max_images` images of `dataset` (non-difficult objects; VOC's difficult ones are left out,
    as in evaluation), and the share of pairs whose query looks at its object more than an
    even spread would."""
    objects = dataset.objects
    n = min(max_images, len(dataset))
    usable = (objects.image_index < n) & ~objects.difficult & np.isfinite(objects.box).all(axis=1)
    boxes_of: dict[tuple[int, int], list[np.ndarray]] = {}
    for i, c, box in zip(
        objects.image_index[usable], objects.class_index[usable], objects.box[usable], strict=True
    ):
        boxes_of.setdefault((int(i), int(c)), []).append(box)
    import torch

    device = next(model.parameters()).device
    on, chance = [], []
    for start in range(0, n, batch_size):
        rows = range(start, min(start + batch_size, n))
        images = torch.stack([dataset[i][0] for i in rows]).to(device)
        if not images.is_floating_point():  # uint8 items skip the normalisation the model expects
            raise ValueError(
                "attention_on_objects needs the float pipeline (build_dataset's default)"
            )
        with torch.no_grad():
            maps = model.cross_attention(images).float().cpu().numpy()  # [b, K, h, w]
        for j, i in enumerate(rows):
            for c in range(maps.shape[1]):
                if (i, c) in boxes_of:
                    o, ch = attention_on_boxes(maps[j, c], np.stack(boxes_of[(i, c)]))
                    on.append(o)
                    chance.append(ch)
    on_a, chance_a = np.asarray(on), np.asarray(chance)
    return {
        "images": n,
        "pairs": int(on_a.size),
        "on_object": float(on_a.mean()) if on_a.size else float("nan"),
        "chance": float(chance_a.mean()) if on_a.size else float("nan"),
        "above_chance": float((on_a > chance_a).mean()) if on_a.size else float("nan"),
    }


def write_summary(summary: dict[str, Any], out_dir: str | Path, weights: str) -> Path | None:
    """Write `summary` (from `attention_on_objects`) and where the weights came from as
    out_dir/tables/attention_on_objects.json; nothing when out_dir is empty."""
    if not out_dir:
        return None
    from mlic.runrecord import atomic_write_bytes

    path = Path(out_dir) / "tables" / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**summary, "weights": weights}, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode())
    return path
