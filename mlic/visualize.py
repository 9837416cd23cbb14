"""Pictures for the notebooks: a run's curves, shapes through the model, images with their
labels, and where a class query's cross-attention looks. Logic only; the notebooks show it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from torch import nn


def plot_history(history: pd.DataFrame, title: str = "") -> plt.Figure:
    """Training loss (ASL per sample) and validation mAP (%) of the model and its EMA, by epoch."""
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(9, 3.2))
    sns.lineplot(data=history, x="epoch", y="train_loss", marker="o", ax=ax_loss)
    ax_loss.set(ylabel="training loss (ASL per sample)", title="loss")
    long = history.melt("epoch", ["map", "map_ema"], var_name="weights", value_name="mAP")
    long["weights"] = long["weights"].map({"map": "model", "map_ema": "EMA"})
    sns.lineplot(data=long, x="epoch", y="mAP", hue="weights", marker="o", ax=ax_map)
    ax_map.set(ylabel="validation mAP (%)", title="mAP")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def trace_shapes(model: nn.Module, images: torch.Tensor) -> pd.DataFrame:
    """The output shape of each top-level stage for one forward pass, in order of execution."""
    rows: list[dict[str, str]] = []
    hooks = []
    for name, module in model.named_modules():
        if name.count(".") > 1 or not name:
            continue

        def hook(mod, inputs, output, name=name):
            if isinstance(output, torch.Tensor):
                rows.append(
                    {"module": name, "type": type(mod).__name__, "output": str(list(output.shape))}
                )

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        for h in hooks:
            h.remove()
    rows.append({"module": "(logits)", "type": "", "output": str(list(logits.shape))})
    return pd.DataFrame(rows)


def to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """[3, H, W] normalised tensor -> [H, W, 3] float image in [0, 1]."""
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return (image.cpu() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()


def show_predictions(
    images: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    thresholds: torch.Tensor | float | None = None,
    top: int = 3,
    title: str = "",
) -> plt.Figure:
    """Each image with its true labels and the model's answer; `title` says whose answer (the
    run and its weights), so a saved figure names the model it shows.

    With `thresholds` (per class [K], or one number) the answer is the predicted label set, as
    `mlic predict` gives it: true labels are marked found (+) or missed (-), predicted labels
    that are not true are marked as false alarms (!). Without, the `top` highest scores."""
    titles = []
    for target, score in zip(targets, scores, strict=True):
        true = torch.nonzero(target > 0.5).flatten().tolist()
        if thresholds is None:
            best = torch.argsort(score, descending=True)[:top].tolist()
            lines = ["true:", *(class_names[k] for k in true), "", "top scores:"]
            lines += [f"{class_names[k]} {score[k]:.2f}" for k in best]
        else:
            chosen = set(torch.nonzero(score >= thresholds).flatten().tolist())
            lines = ["true (+ found, - missed):"]
            lines += [
                f"{'+' if k in chosen else '-'} {class_names[k]} {score[k]:.2f}" for k in true
            ]
            alarms = sorted(chosen - set(true), key=lambda k: -float(score[k]))
            lines += ["", "false alarms:", *(f"! {class_names[k]} {score[k]:.2f}" for k in alarms)]
            if not alarms:
                lines.append("(none)")
        titles.append("\n".join(lines))
    n = len(images)
    text_height = 0.3 + 0.15 * max(t.count("\n") + 1 for t in titles)  # inches at 7 pt
    fig, axes = plt.subplots(
        1, n, figsize=(2.6 * n, 2.6 + text_height), squeeze=False, layout="constrained"
    )  # constrained: room for the longest title, none cut off
    for ax, image, text in zip(axes[0], images, titles, strict=True):
        ax.imshow(to_display(image, mean, std))
        ax.set_title(text, fontsize=7, loc="left")
        ax.axis("off")
    if title:  # below the images: the panels' titles above differ in height
        fig.supxlabel(title, fontsize=8)
    return fig


def label_agreement(
    targets: torch.Tensor, scores: torch.Tensor, thresholds: torch.Tensor | float
) -> dict[str, int]:
    """How the predicted label sets of these images compare with the true ones: labels found,
    missed and falsely predicted, and images whose predicted set is exactly right."""
    predicted = scores >= thresholds
    true = targets > 0.5
    return {
        "images": int(true.shape[0]),
        "true_labels": int(true.sum()),
        "found": int((predicted & true).sum()),
        "missed": int((~predicted & true).sum()),
        "false_alarms": int((predicted & ~true).sum()),
        "exactly_right": int((predicted == true).all(dim=1).sum()),
    }


def show_cross_attention(
    image: torch.Tensor,
    attention: torch.Tensor,
    class_indices: Sequence[int],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    title: str = "",
) -> plt.Figure:
    """The decoder's cross-attention of chosen class queries ([K, h, w]), upsampled over the image.

    One colour scale for every map (0 to the largest weight shown), with its bar: a query's
    weights over the h*w tokens sum to 1, so an even spread is 1/(h*w) everywhere."""
    shown = to_display(image, mean, std)
    size = shown.shape[:2]
    heats = [
        torch.nn.functional.interpolate(
            attention[k][None, None].float(), size=size, mode="bilinear", align_corners=False
        )[0, 0].numpy()
        for k in class_indices
    ]
    vmax = max(float(h.max()) for h in heats)
    fig, axes = plt.subplots(
        1,
        len(class_indices) + 1,
        figsize=(2.6 * (len(class_indices) + 1) + 0.6, 2.9),
        layout="constrained",
    )
    axes[0].imshow(shown)
    axes[0].set_title("image", fontsize=8)
    for ax, k, heat in zip(axes[1:], class_indices, heats, strict=True):
        ax.imshow(shown)
        mappable = ax.imshow(heat, cmap="magma", alpha=0.55, vmin=0.0, vmax=vmax)
        ax.set_title(f"query: {class_names[k]}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    h, w = attention.shape[-2:]
    bar = fig.colorbar(mappable, ax=list(axes[1:]), shrink=0.85)
    bar.set_label(
        f"attention weight of a token\n(even spread: 1/{h * w} = {1 / (h * w):.3f})", fontsize=7
    )
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return fig


def show_image_labels(
    files: Sequence[str], labels: Sequence[Sequence[tuple[str, float]]], size: int = 128
) -> plt.Figure:
    """Image files with their predicted (label, score) pairs: what `mlic predict` says, drawn."""
    from mlic.data.images import open_rgb

    n = len(files)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.2), squeeze=False)
    for ax, file, pairs in zip(axes[0], files, labels, strict=True):
        ax.imshow(open_rgb(file).resize((size, size)))
        text = "\n".join(f"{name} {score:.2f}" for name, score in pairs) or "(no label)"
        ax.set_title(text, fontsize=7, loc="left")
        ax.axis("off")
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, out_dir: str | Path, name: str) -> Path | None:
    """Write `fig` as out_dir/figures/<name>.png (atomically, no timestamp in the file, so a
    rerun with the same pixels gives the same bytes); nothing when out_dir is empty."""
    if not out_dir:
        return None
    import io

    from mlic.runrecord import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    path = Path(out_dir) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path
