"""Figures 5 and 6: training loss and validation mAP by epoch of "ours" (all its seeds), drawn
on a fresh Figure at a fixed size and dpi and saved without a software tag (byte-identical)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pandas as pd

from mlic.report.budget import ROBUST_POINTS, budget_pair, long_enough
from mlic.report.captions import DATASET_NAMES
from mlic.report.records import Collected

OURS = "coco448-resnest-dual"  # the run behind Figures 5 and 6
FIGURE_SIZE = (6.4, 4.0)  # inches
FIGURE_DPI = 100

# matplotlib and seaborn are imported inside the functions that draw: they take about a second
# to import, which `import mlic.report` (the CLI, the tables alone) should not pay.


def figure_frames(collected: Collected) -> tuple[pd.DataFrame | None, str]:
    """Per-epoch history of "ours" (all its seeds, long form) and a subtitle."""
    records = collected.records.get(OURS, [])
    if not records:
        return None, ""
    frames = []
    for r in records:
        h = r.history()
        frames.append(h.assign(run=r.name))
    df = pd.concat(frames, ignore_index=True)
    backbones = ", ".join(sorted({str(r.get("model.backbone")) for r in records}))
    sizes = ", ".join(sorted({str(r.get("data.image_size")) for r in records}))
    where = (
        "generated embedded dataset"
        if all(not r.get("data.root") for r in records)
        else DATASET_NAMES.get(str(records[0].get("data.dataset")), "")
    )
    subtitle = f"{OURS}: {backbones}, {sizes} px, {where}"
    if len(records) > 1:
        subtitle += f"\nmean ± sd over {len(records)} seeds"
    return df, subtitle


def render_png(draw: Callable[[Any], None]) -> bytes:
    """Draw on a fresh Figure (no pyplot, no backend change) and return its PNG bytes."""
    import matplotlib as mpl
    import seaborn as sns
    from matplotlib.figure import Figure

    with mpl.rc_context():
        mpl.rcdefaults()  # independent of a notebook's or user's rc settings
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            fig = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
            ax = fig.subplots()
            draw(ax)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
    return buf.getvalue()


def _label(ax: Any, title: str, subtitle: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(f"{title}\n{subtitle}", fontsize="small")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _placeholder(ax: Any, title: str, reason: str) -> None:
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True, transform=ax.transAxes)


def figure5(collected: Collected) -> bytes:
    """Figure 5: training loss of "ours" by epoch (ASL, summed over classes, mean per image)."""
    import seaborn as sns

    df, subtitle = figure_frames(collected)
    title = "Figure 5. Training loss of ours"

    def draw(ax: Any) -> None:
        if df is None:
            _placeholder(ax, title, f"No complete run record of {OURS}.")
            return
        sns.lineplot(data=df, x="epoch", y="train_loss", errorbar="sd", marker="o", ax=ax)
        _label(ax, title, subtitle)
        ax.set_ylabel("ASL loss per image (sum over classes)")

    return render_png(draw)


def budget_line(collected: Collected) -> str:
    """Whether "ours" trained long enough, by Table 6's criterion (seed 0)."""
    once, twice = budget_pair(collected, "resnest-dual")
    if once is None or twice is None:
        return "no run at twice the epochs yet (mlic reproduce --only budget)\nbudget not checked"
    change = twice.map - once.map
    verdict = "long enough" if long_enough(change) else "NOT long enough"
    return (
        f"twice the epochs ({twice.get('train.epochs')}): {change:+.2f} points of best-epoch mAP "
        f"(seed 0)\nbudget {verdict} (criterion: < {ROBUST_POINTS:g} point, Table 6)"
    )


def figure6(collected: Collected) -> bytes:
    """Figure 6: validation mAP (%) of "ours" by epoch, of the model and of its EMA."""
    import seaborn as sns

    df, subtitle = figure_frames(collected)
    title = "Figure 6. Validation mAP of ours, model and EMA weights"
    subtitle += "\n" + budget_line(collected)

    def draw(ax: Any) -> None:
        if df is None:
            _placeholder(ax, title, f"No complete run record of {OURS}.")
            return
        long = pd.concat(
            [
                df[["epoch", "run"]].assign(mAP=df["map"], weights="model"),
                df[["epoch", "run"]].assign(mAP=df["map_ema"], weights="EMA"),
            ],
            ignore_index=True,
        )
        sns.lineplot(
            data=long,
            x="epoch",
            y="mAP",
            hue="weights",
            style="weights",
            errorbar="sd",
            marker="o",
            ax=ax,
        )
        _label(ax, title, subtitle)
        ax.set_ylabel("mAP (%)")

    return render_png(draw)
