"""What a trained run knows, said beside its predictions: the classes it can name, the images it
was trained on and their size, and a caution where its labels cannot be trusted.

A user who feeds photos to the embedded preset's model (coloured shapes at 56 px) gets a dozen
labels per photo; nothing in the scores says why. `mlic predict` prints this card's line with
its output, and each caution as one line of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mlic.inference import Trained

# An input whose longer side is over this many times the training size is shrunk so far that
# what the model learned to see at its size may no longer be there.
FAR_LARGER = 4


@dataclass(frozen=True)
class ModelCard:
    """The facts about a trained run that decide what its labels mean."""

    run: str  # the run directory's name, or the checkpoint file's when given alone
    checkpoint: str
    epoch: int | None
    weights: str  # "model" or "ema"
    dataset: str  # coco, voc or csv
    generated: bool  # trained on the embedded (generated) dataset, not photos
    image_size: int  # px: every input is resized to image_size x image_size
    classes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "checkpoint": self.checkpoint,
            "epoch": self.epoch,
            "weights": self.weights,
            "dataset": self.dataset,
            "generated_data": self.generated,
            "image_size": self.image_size,
            "class_names": list(self.classes),
        }

    def line(self) -> str:
        """One line: which model, trained on what, at which size, naming which classes."""
        data = (
            f"the generated embedded dataset ({self.dataset} layout)"
            if self.generated
            else (f"a {self.dataset} dataset")
        )
        epoch = f"best epoch {self.epoch}, " if self.epoch is not None else ""
        return (
            f"model: {self.run} ({epoch}{self.weights} weights), trained on {data} at "
            f"{self.image_size} px; {len(self.classes)} classes: {', '.join(self.classes)}"
        )


def model_card(trained: Trained) -> ModelCard:
    cfg = trained.cfg
    run = trained.run_dir.name if trained.run_dir is not None else trained.checkpoint.name
    return ModelCard(
        run=run,
        checkpoint=str(trained.checkpoint),
        epoch=trained.epoch,
        weights=trained.weights,
        dataset=cfg.data.dataset,
        generated=cfg.data.is_embedded,
        image_size=cfg.data.image_size,
        classes=list(trained.class_names),
    )


def image_sides(files: Iterable[str | Path]) -> list[int]:
    """The longer side in px of each file that opens (PIL reads the header only)."""
    sides = []
    for file in files:
        try:
            with Image.open(file) as image:
                sides.append(max(image.size))
        except (OSError, UnidentifiedImageError, ValueError):
            continue  # predict reports unreadable files itself
    return sides


def cautions(card: ModelCard, sides: Sequence[int]) -> list[str]:
    """The lines a user should read before trusting the labels (none for a fitting input)."""
    out = []
    if card.generated:
        out.append(
            f"{card.run} was trained on generated shapes (classes such as {card.classes[0]!r}), "
            "not photos: on other images its labels say nothing about what they show"
        )
    far = [s for s in sides if s > FAR_LARGER * card.image_size]
    if far:
        out.append(
            f"{len(far)} of {len(sides)} image(s) are over {FAR_LARGER}x the {card.image_size} px "
            f"the model was trained at (the largest {max(far)} px): each is shrunk to "
            f"{card.image_size}x{card.image_size} px, so details under "
            f"{max(far) // card.image_size} px across vanish"
        )
    return out
