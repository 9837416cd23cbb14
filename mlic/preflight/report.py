"""What `mlic data check` found, and the one screen it prints: one line per finding, then the
verdict (the command exits 1 when any finding is a FAIL)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlic.config import Config


@dataclass(frozen=True)
class Finding:
    status: str  # "ok", "info", "warn" or "FAIL"
    topic: str  # "data", "weights", "gpu", "time"
    text: str


def render(title: str, findings: Sequence[Finding]) -> str:
    """The report: one line per finding, then the verdict."""
    lines = [title]
    for f in findings:
        lines.append(f"[{f.status:<4}] {f.topic:<7} {f.text}")
    failed = [f for f in findings if f.status == "FAIL"]
    warned = sum(f.status == "warn" for f in findings)
    if failed:
        lines.append(f"{len(failed)} problem(s) to fix before training" + (
            f", {warned} warning(s)" if warned else ""))  # fmt: skip
    else:
        lines.append("nothing missing" + (f"; {warned} warning(s) above" if warned else "") + ".")
    return "\n".join(lines)


def describe(cfg: Config) -> str:
    """One configuration in a line: the report's title."""
    d, m, t = cfg.data, cfg.model, cfg.train
    micro = t.batch_size // t.accumulation_steps
    return (
        f"{cfg.name}: {d.dataset} at {d.image_size} px, {m.backbone} + {m.head} head, batch "
        f"{t.batch_size} ({t.accumulation_steps} x {micro}), {t.epochs} epochs"
    )
