"""Multi-label metrics: per-class AP and mAP (the paper's eq. 3-5) and CP/CR/CF1/OP/OR/OF1.

All values are in % (0-100). Inputs are [N, K] arrays (N images, K classes) as NumPy arrays or
torch tensors; everything is computed in NumPy, vectorised over classes.

Conventions (documented once here, referred to by the functions below):

- **AP** (paper §2.1, eq. 3-5): non-interpolated; for each class, the mean over its positives of
  the precision at the positive's rank (ASL's `average_precision`). Q2L reports the interpolated
  VOC AP instead, which is 0.2-0.6 points higher at mid-range; we do not.
- **Ties**: a rank-based AP depends on how tied scores are ordered (ASL's code takes whatever
  order `argsort` returns). We report the *expectation over all orders of the tied scores*. It
  equals ASL's AP whenever no tie mixes positives and negatives, never depends on the input
  order, and is computed exactly in closed form (see `_expected_ap_terms`). Ties are common
  in practice: sigmoid saturates to exactly 1.0 in float32 above a logit of ~17, and bf16
  logits have 8 significant bits - pass logits to `average_precision` where you have them.
- **No positives**: a class without positives in the evaluated set has AP = NaN; it is left out
  of the mAP and of the class-averaged CP/CR, and reported by `compute_metrics`.
- **ignore** (VOC `difficult`): an ignored entry is left out entirely, as the VOC devkit does -
  neither positive nor negative, not ranked, not counted, and not eligible for the top-k.
- **Threshold metrics** as ML-GCN's `AveragePrecisionMeter.evaluation` (also used by Q2L-era
  code): a label is predicted when prob >= threshold (ML-GCN: logit >= 0); CP = mean over
  classes of Nc/Np with Np = 0 counted as precision 0; CR = mean of Nc/Ng; CF1 = 2 CP CR /
  (CP + CR) (harmonic mean of the averages, not the mean of per-class F1); OP = sum Nc / sum Np;
  OR = sum Nc / sum Ng; OF1 likewise. Two departures, both only where ML-GCN's output is
  undefined or off: classes without positives are excluded from CP/CR (ML-GCN divides by zero
  for CR), and OP uses the true sum of Np (ML-GCN's clipping of Np = 0 to 1 adds one phantom
  prediction per silent class to the denominator). An F1 of 0/0 is 0.
- **AP by object size** (`map_by_size`, beyond the paper): the AP above on a subset per size
  bucket; the rule is written at `SIZE_BUCKETS`.
- **Top-k** as ML-GCN's `overall_topk`: a label is predicted when it is among the image's k
  highest scores *and* passes the threshold. Ties for the k-th place go to the lower class
  index (a stable sort), so the result is deterministic.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ArrayLike = Any  # np.ndarray | torch.Tensor | nested lists

METRIC_KEYS = ("cp", "cr", "cf1", "op", "or", "of1")


# --------------------------------------------------------------------------- input checks


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """NumPy view of an array or a torch tensor, without importing torch here."""
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()  # NumPy has no bfloat16; float32 holds bf16 and fp16 exactly
        return x.numpy()
    return np.asarray(x)


def prepare_arrays(
    scores: ArrayLike, targets: ArrayLike, ignore: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores as float [N, K], targets and the valid mask as bool [N, K]; refuse bad input."""
    s = _to_numpy(scores)
    t = _to_numpy(targets)
    if s.ndim != 2 or t.shape != s.shape:
        raise ValueError(f"scores and targets must both be [N, K]; got {s.shape} and {t.shape}")
    if s.dtype.kind in "biu":
        s = s.astype(np.float64)
    elif s.dtype.kind != "f":
        raise ValueError(f"scores must be numbers; got dtype {s.dtype}")
    elif s.dtype == np.float16:
        s = s.astype(np.float32)
    if t.dtype != bool:
        if not np.isin(t, (0, 1)).all():
            raise ValueError(
                "targets must be 0/1; soft or mixed labels (CutMix) cannot be evaluated"
            )
        t = t.astype(bool)
    if ignore is None:
        valid = np.ones(s.shape, dtype=bool)
    else:
        m = _to_numpy(ignore)
        if m.shape != s.shape:
            raise ValueError(f"ignore must have the shape of scores {s.shape}; got {m.shape}")
        valid = ~m.astype(bool)
    if np.isnan(s[valid]).any():
        raise ValueError("scores contain NaN")
    return s, t & valid, valid


def _check_probs(p: np.ndarray, valid: np.ndarray) -> None:
    v = p[valid]
    if v.size and (v.min() < 0.0 or v.max() > 1.0):
        raise ValueError("probs must lie in [0, 1] (apply a sigmoid to logits before thresholding)")


# --------------------------------------------------------------------------- AP and mAP


def _expected_group_sum(
    a: np.ndarray, b: np.ndarray, p: np.ndarray, g: np.ndarray, h: np.ndarray
) -> np.ndarray:
    """Expected sum of the precisions at the positives of a tied group, over all its orders.

    The group holds g entries, p of them positive, at ranks b+1 .. b+g after b ranked entries
    of which a are positive; h = sum_{s=1..g} 1 / (b+s). Slot s holds a positive with
    probability p/g; given that, the other p-1 positives spread uniformly over the other g-1
    slots, so the expected number of positives up to slot s is a + 1 + (s-1)(p-1)/(g-1). The
    rank is fixed, so the expected precision there is that count over b+s, and the sum over
    the slots is (p/g) [(a+1) h + (p-1)/(g-1) (g - (b+1) h)], using
    sum_s (s-1)/(b+s) = g - (b+1) h. For g = 1 this is ASL's term p (a+1)/(b+1).
    """
    single = p * (a + 1) / (b + 1)
    gm1 = np.maximum(g - 1, 1)
    tied = (p / g) * ((a + 1) * h + (p - 1) / gm1 * (g - (b + 1) * h))
    return np.where(g == 1, single, tied)


def average_precision(
    scores: ArrayLike, targets: ArrayLike, ignore: ArrayLike | None = None
) -> np.ndarray:
    """Per-class non-interpolated AP in % [K] (paper eq. 3-5); NaN for a class without positives.

    `scores` are any monotone scores (logits or probabilities) [N, K]; `targets` are 0/1 [N, K];
    `ignore` (bool [N, K]) leaves entries out entirely. Tied scores count with the expectation
    over their orders (module docstring), so the result does not depend on the input order.
    """
    s, t, valid = prepare_arrays(scores, targets, ignore)
    n, k = s.shape
    if n == 0:
        return np.full(k, np.nan)
    # [N, K] -> [K, N]: one contiguous row per class; ignored entries become NaN, which
    # argsort puts last, so the valid entries of each class are a prefix of its ranking.
    key = np.where(valid, -s, np.nan).T.copy()
    order = np.argsort(key, axis=1)
    ranked = np.take_along_axis(key, order, axis=1)  # [K, N] scores, best first
    pos = np.take_along_axis(t.T, order, axis=1)  # [K, N] bool

    # Tied groups: runs of equal scores within a row (NaN != NaN, so every ignored entry is a
    # group of its own, and no group crosses a row boundary since each row opens one).
    starts = np.ones((k, n), dtype=bool)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.flatnonzero(starts)  # [G] flat index of each group's first entry
    size = np.diff(first, append=k * n)  # g
    flat_pos = pos.ravel()
    in_group = np.add.reduceat(flat_pos, first)  # p (ignored entries are never positive)
    keep = in_group > 0  # only groups holding a positive add to the AP
    first, size, in_group = first[keep], size[keep], in_group[keep]
    rank0 = first % n  # b: entries ranked before the group (all valid: they form a prefix)
    before = np.cumsum(pos, axis=1).ravel()[first] - flat_pos[first]  # a
    harmonic = np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, n + 1))))
    h = harmonic[rank0 + size] - harmonic[rank0]  # sum of 1/rank over the group
    f64 = np.float64
    sums = _expected_group_sum(
        before.astype(f64), rank0.astype(f64), in_group.astype(f64), size.astype(f64), h
    )
    per_class = np.bincount(first // n, weights=sums, minlength=k)  # [K]

    num_pos = pos.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = 100.0 * per_class / num_pos
    return np.where(num_pos > 0, ap, np.nan)


def mean_average_precision(
    scores: ArrayLike, targets: ArrayLike, ignore: ArrayLike | None = None
) -> tuple[float, int]:
    """(mAP in %, number of classes with positives): the mean AP over classes that have any."""
    ap = average_precision(scores, targets, ignore)
    evaluated = ~np.isnan(ap)
    n = int(evaluated.sum())
    return (float(ap[evaluated].mean()) if n else math.nan), n


# --------------------------------------------------------------------------- AP by object size

# COCO's size ranges (COCOeval's areaRng): small < 32^2 px, medium < 96^2 px, large otherwise,
# in pixels of a COCO image. We apply them to the area as a FRACTION of the image, at COCO's
# typical image of 640 x 480: small < 32^2 / (640 * 480) = 0.33 % of the image, medium < 3 %.
# For a 640 x 480 COCO image this is COCOeval's rule exactly; for any other size (COCO's other
# shapes, VOC's ~500 x 375, the embedded dataset's small squares) the pixel limits scale with
# the image's area. Why a fraction: every image is resized to S x S before the model sees it,
# so an object's size in the network's input is its fraction of the image, whatever the file's
# resolution. Boundaries: an area equal to a limit belongs to the larger bucket.
SIZE_BUCKETS = ("small", "medium", "large")
SIZE_REFERENCE_IMAGE = (640, 480)  # px: COCO's typical image, where the limits are COCO's own
SIZE_LIMITS_PX2 = (32**2, 96**2)  # at the reference image
SIZE_RULE = (
    "a positive (image, class) belongs to the bucket of the class's largest instance in the "
    "image; limits 32^2 and 96^2 px at a 640x480 image, scaled by the image's area; positives "
    "of other buckets (or of unknown area) are left out, negatives count in every bucket"
)


def size_bucket(area_fraction: ArrayLike) -> np.ndarray:
    """Bucket index per entry (0 small, 1 medium, 2 large; -1 where the area is NaN) of areas
    given as fractions of their image (the rule above SIZE_BUCKETS)."""
    a = np.asarray(_to_numpy(area_fraction), dtype=np.float64)
    reference = a * float(SIZE_REFERENCE_IMAGE[0] * SIZE_REFERENCE_IMAGE[1])  # px^2 at 640x480
    bucket = np.digitize(reference, SIZE_LIMITS_PX2, right=False)  # x < 1024 -> 0, ... >= 9216 -> 2
    return np.where(np.isnan(a), -1, bucket).astype(np.int8)


def map_by_size(
    scores: ArrayLike,
    targets: ArrayLike,
    largest_area_fraction: ArrayLike,
    ignore: ArrayLike | None = None,
) -> dict[str, Any]:
    """mAP (%) per object-size bucket, as a JSON-able dict (NaN written as None).

    `largest_area_fraction` [N, K]: per image and class, the area of the class's largest
    instance / the image's area (NaN where unknown); `SplitIndex.largest_area_fraction` gives
    it. In bucket b, a positive whose largest instance is of another bucket is left out (as if
    ignored), never turned into a negative; negatives and `ignore` stay as they are. Each
    bucket's mAP averages the classes that have positives in it (`num_classes`); `chance_map`
    is the same average for a ranking at random, the floor a learnt bucket must clear. Keys:
    small, medium, large ({map, chance_map, num_positives, num_classes}),
    num_positives_without_area, rule, reference_image_px, limits_px2, limits_fraction.
    """
    s, t, valid = prepare_arrays(scores, targets, ignore)
    frac = np.asarray(_to_numpy(largest_area_fraction), dtype=np.float64)
    if frac.shape != s.shape:
        raise ValueError(
            f"largest_area_fraction must have the shape of scores {s.shape}; got {frac.shape}"
        )
    bucket = size_bucket(frac)
    reference = SIZE_REFERENCE_IMAGE[0] * SIZE_REFERENCE_IMAGE[1]
    out: dict[str, Any] = {}
    for b, name in enumerate(SIZE_BUCKETS):
        elsewhere = t & (bucket != b)  # positives of the other buckets: not ranked here
        left_out = ~valid | elsewhere
        ap = average_precision(s, t, left_out)
        # A model that learnt nothing of the bucket: every score tied, whose AP our tie rule
        # gives as the expectation over random orders. With a few positives among many
        # negatives it is well above the positive rate (one in 1,000: 0.75 %, not 0.1 %).
        chance = average_precision(np.zeros_like(s), t, left_out)
        evaluated = ~np.isnan(ap)
        out[name] = {
            "map": _json_float(float(ap[evaluated].mean())) if evaluated.any() else None,
            "chance_map": (
                _json_float(float(chance[evaluated].mean())) if evaluated.any() else None
            ),
            "num_positives": int((t & (bucket == b)).sum()),
            "num_classes": int(evaluated.sum()),
        }
    out["num_positives_without_area"] = int((t & (bucket < 0)).sum())
    out["rule"] = SIZE_RULE
    out["reference_image_px"] = list(SIZE_REFERENCE_IMAGE)
    out["limits_px2"] = list(SIZE_LIMITS_PX2)
    out["limits_fraction"] = [limit / reference for limit in SIZE_LIMITS_PX2]
    return out


# --------------------------------------------------------------------------- CP CR CF1 OP OR OF1


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _counts_to_metrics(pred: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """The six metrics in % from a predicted-label mask and targets (both bool [N, K], valid only)."""
    nc = (pred & t).sum(axis=0)  # correct predictions per class
    npred = pred.sum(axis=0)  # predictions per class
    ngt = t.sum(axis=0)  # positives per class
    has_pos = ngt > 0
    if has_pos.any():
        cp = float(np.mean(nc[has_pos] / np.maximum(npred[has_pos], 1)))  # Np = 0 -> 0
        cr = float(np.mean(nc[has_pos] / ngt[has_pos]))
    else:
        cp = cr = math.nan
    op = float(nc.sum() / npred.sum()) if npred.sum() else 0.0
    orc = float(nc.sum() / ngt.sum()) if ngt.sum() else math.nan
    out = {"cp": cp, "cr": cr, "cf1": _f1(cp, cr), "op": op, "or": orc, "of1": _f1(op, orc)}
    return {key: 100.0 * value for key, value in out.items()}


def threshold_metrics(
    probs: ArrayLike, targets: ArrayLike, threshold: float = 0.5, ignore: ArrayLike | None = None
) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 in % for labels with prob >= threshold (ML-GCN's convention)."""
    p, t, valid = prepare_arrays(probs, targets, ignore)
    _check_probs(p, valid)
    return _counts_to_metrics((p >= threshold) & valid, t)


def threshold_metrics_per_class(
    probs: ArrayLike, targets: ArrayLike, thresholds: ArrayLike, ignore: ArrayLike | None = None
) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 in % with a threshold per class (`thresholds` [K], each in
    [0, 1]): class k is predicted when prob >= thresholds[k] (e.g. `mlic.thresholds`)."""
    p, t, valid = prepare_arrays(probs, targets, ignore)
    _check_probs(p, valid)
    th = np.asarray(_to_numpy(thresholds), dtype=np.float64)
    if th.shape != (p.shape[1],):
        raise ValueError(f"thresholds must be [K] = [{p.shape[1]}]; got {th.shape}")
    if np.isnan(th).any() or th.min() < 0.0 or th.max() > 1.0:
        raise ValueError("thresholds must lie in [0, 1]")
    return _counts_to_metrics((p >= th[None, :]) & valid, t)


def topk_metrics(
    probs: ArrayLike,
    targets: ArrayLike,
    k: int = 3,
    ignore: ArrayLike | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """The six metrics in % when each image predicts its k best labels that pass the threshold."""
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    p, t, valid = prepare_arrays(probs, targets, ignore)
    _check_probs(p, valid)
    masked = np.where(valid, p, -np.inf)
    top = np.argsort(-masked, axis=1, kind="stable")[:, :k]  # [N, k]; ties -> lower index
    pred = np.zeros(p.shape, dtype=bool)
    np.put_along_axis(pred, top, True, axis=1)
    return _counts_to_metrics(pred & (p >= threshold) & valid, t)


# --------------------------------------------------------------------------- everything at once


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def compute_metrics(
    probs: ArrayLike,
    targets: ArrayLike,
    ignore: ArrayLike | None = None,
    class_names: list[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """All metrics as a JSON-able dict (values in %; NaN written as None).

    Keys: map, num_classes_evaluated, classes_without_positives, per_class_ap {name: %},
    cp cr cf1 op or of1 (at `threshold`), the same with a `_top3` suffix, threshold, num_images.
    AP is computed from `probs`; where sigmoid saturation makes ties, pass logits to
    `average_precision` instead (module docstring).
    """
    p, t, valid = prepare_arrays(probs, targets, ignore)
    _check_probs(p, valid)
    k = p.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for {k} classes")
    if len(set(names)) != k:
        raise ValueError("class_names must be unique")
    mask = ~valid
    ap = average_precision(p, t, mask)
    evaluated = ~np.isnan(ap)
    out: dict[str, Any] = {
        "map": _json_float(float(ap[evaluated].mean())) if evaluated.any() else None,
        "num_classes_evaluated": int(evaluated.sum()),
        "classes_without_positives": [n for n, e in zip(names, evaluated, strict=True) if not e],
        "per_class_ap": {n: _json_float(float(a)) for n, a in zip(names, ap, strict=True)},
    }
    for key, value in threshold_metrics(p, t, threshold, mask).items():
        out[key] = _json_float(value)
    for key, value in topk_metrics(p, t, 3, mask, threshold).items():
        out[f"{key}_top3"] = _json_float(value)
    out["threshold"] = float(threshold)
    out["num_images"] = int(p.shape[0])
    return out
