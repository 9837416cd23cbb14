"""Where the backbone's ImageNet weights would come from, without loading them: a local
`model.pretrained_file`, the Hugging Face cache, or the hub (a HEAD request)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import huggingface_hub

from mlic.config import Config
from mlic.errors import one_line
from mlic.preflight.report import Finding

HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from a hub repo

# probe(repo_id, filename) -> a short description of the file on the hub; raises if unreachable.
Probe = Callable[[str, str], str]


def check_weights(cfg: Config, probe: Probe | None = None) -> Finding:
    """Where the backbone's ImageNet weights would come from, without loading them."""
    m = cfg.model
    if m.pretrained_file:
        path = Path(m.pretrained_file)
        if path.is_file():
            size = path.stat().st_size / 2**20
            return Finding(
                "ok", "weights", f"{m.backbone}: model.pretrained_file {path} ({size:,.1f} MiB)"
            )
        return Finding("FAIL", "weights", f"{m.backbone}: model.pretrained_file {path} not found")
    if not m.pretrained:
        return Finding(
            "warn",
            "weights",
            f"{m.backbone}: model.pretrained=false, random initialisation (the paper starts "
            "from ImageNet weights)",
        )
    # Here, not at the top: importing timm takes seconds (torch and its model registry), and
    # only weights that come from the hub need it.
    import timm

    cfg_t = timm.models.get_pretrained_cfg(m.backbone) if timm.is_model(m.backbone) else None
    repo = getattr(cfg_t, "hf_hub_id", None) if cfg_t is not None else None
    if not repo:
        return Finding(
            "FAIL",
            "weights",
            f"{m.backbone}: timm publishes no ImageNet weights for it on the Hugging Face hub; "
            "pass model.pretrained_file=PATH or set model.pretrained=false",
        )
    for filename in HF_FILES:
        cached = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return Finding("ok", "weights", f"{m.backbone}: {repo} in the local cache ({cached})")
    hint = (
        "download them where there is a network and pass model.pretrained_file=PATH "
        "(a .safetensors or .pth state dict)"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return Finding(
            "FAIL", "weights", f"{m.backbone}: {repo} not cached and HF_HUB_OFFLINE is set; {hint}"
        )
    try:
        about = (probe or probe_hub)(repo, HF_FILES[0])
    except Exception as exc:  # any network or hub failure: the run would fail the same way
        reason = one_line(exc)[:160] or type(exc).__name__
        return Finding(
            "FAIL", "weights", f"{m.backbone}: cannot reach {repo} on the hub ({reason}); {hint}"
        )
    return Finding(
        "ok", "weights", f"{m.backbone}: {repo} reachable ({about}), fetched when the run starts"
    )


def probe_hub(repo: str, filename: str) -> str:
    """A HEAD request for the weight file (no download)."""
    url = huggingface_hub.hf_hub_url(repo, filename)
    meta = huggingface_hub.get_hf_file_metadata(url, timeout=10)
    return f"{filename}, {meta.size / 2**20:,.0f} MiB" if meta.size else filename
