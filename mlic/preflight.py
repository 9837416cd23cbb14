"""`mlic data check`: one screen, before a long run, of what it needs and what is missing.

It reads the annotation files with the loaders training uses, counts the image files against
them and against the full splits (mlic/data/sources.py), decodes a sample of the images (all of
them with verify=True), asks whether the backbone's ImageNet weights can be had (a local
`model.pretrained_file`, the Hugging Face cache, or the hub), and compares the GPU's memory and
the dataset's size with the paper model's measured figures (mlic/measurements.py). It never
builds the model, so a missing file is reported in seconds, not after the model is built.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlic import measurements as measured
from mlic.config import Config
from mlic.data.sources import EXPECTED_IMAGES
from mlic.errors import DataError, MlicError

SAMPLE = 64  # images decoded per split without --verify, spread evenly over the split
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from a hub repo
CONTEXT_GIB = 1.0  # CUDA context and libraries, beside the tensors the measurements count

# probe(repo_id, filename) -> a short description of the file on the hub; raises if unreachable.
Probe = Callable[[str, str], str]


@dataclass(frozen=True)
class Finding:
    status: str  # "ok", "info", "warn" or "FAIL"
    topic: str  # "data", "weights", "gpu", "time"
    text: str


@dataclass
class Counts:
    """Images per split a run would use (None where the split could not be read)."""

    train: int | None = None
    val: int | None = None


def check_configs(
    configs: Sequence[tuple[str, Config]],
    *,
    verify: bool = False,
    gpus: int = 1,
    probe: Probe | None = None,
    workers: int | None = None,
) -> list[Finding]:
    """Findings for the runs `configs` ((label, config) pairs): data and weights once per
    distinct dataset and backbone, memory and epoch time per run."""
    findings: list[Finding] = []
    counts: dict[tuple, Counts] = {}
    resolved = []
    for label, cfg in configs:
        cfg, note = with_dataset_root(cfg)
        key = _data_key(cfg)
        if key not in counts:
            if note:
                findings.append(Finding("info", "data", note))
            counts[key] = check_data(cfg, findings, verify=verify, workers=workers)
        resolved.append((label, cfg))
    seen_weights = set()
    for _, cfg in resolved:
        key = (cfg.model.backbone, cfg.model.pretrained, cfg.model.pretrained_file)
        if key not in seen_weights:
            seen_weights.add(key)
            findings.append(check_weights(cfg, probe=probe))
    findings.extend(check_gpu(resolved, counts, gpus=gpus))
    return findings


# --------------------------------------------------------------------------- data


def with_dataset_root(cfg: Config) -> tuple[Config, str]:
    """A data root that holds coco/ or voc/ (the layout `mlic reproduce --data-root` reads) is
    taken to mean that dataset's folder, as reproduce does; says so in the note."""
    root = Path(cfg.data.root) if cfg.data.root else None
    if root is None or cfg.data.dataset not in ("coco", "voc"):
        return cfg, ""
    inner = root / cfg.data.dataset
    has_own = (root / "annotations").is_dir() if cfg.data.dataset == "coco" else (
        (root / "VOC2007").is_dir() or root.name == "VOC2007"
    )  # fmt: skip
    if has_own or not inner.is_dir():
        return cfg, ""
    data = dataclasses.replace(cfg.data, root=str(inner))
    note = (
        f"{root} holds {cfg.data.dataset}/ (the layout of `mlic reproduce --data-root`): "
        f"checking {inner}; `mlic train` takes --data-root {inner}"
    )
    return dataclasses.replace(cfg, data=data), note


def _data_key(cfg: Config) -> tuple:
    d = cfg.data
    return (d.dataset, str(d.resolved_root()), d.split("train"), d.split("val"),
            d.max_train_images, d.max_val_images)  # fmt: skip


def check_data(
    cfg: Config, findings: list[Finding], *, verify: bool = False, workers: int | None = None
) -> Counts:
    """Annotation files, image files, a decoded sample; appends findings, returns the counts."""
    from mlic.data.splits import read_split

    d = cfg.data
    root = d.resolved_root()
    counts = Counts()
    if not root.exists():
        findings.append(Finding("FAIL", "data", f"{root}: not found; {_fetch_hint(cfg)}"))
        return counts
    findings.append(Finding("info", "data", f"{d.dataset}: {root}"))
    for which in ("train", "val"):
        split = d.split(which)
        try:
            index = read_split(d.dataset, root, split, train_split=d.split("train"))
        except MlicError as exc:
            findings.append(Finding("FAIL", "data", f"{exc}; {_fetch_hint(cfg)}"))
            continue
        limit = d.max_train_images if which == "train" else d.max_val_images
        used = min(index.num_images, limit) if limit else index.num_images
        setattr(counts, which, used)
        text = f"{d.dataset} {split}: {index.num_images:,} images listed in {_listing(index, root)}"
        if limit and limit < index.num_images:
            text += f" (the run uses the first {limit:,})"
        full = None if d.is_embedded else EXPECTED_IMAGES.get(d.dataset, {}).get(split)
        if full is not None and index.num_images != full:
            text += f"; the full split has {full:,} (a subset, a stand-in, or a damaged file?)"
            findings.append(Finding("warn", "data", text))
        else:
            findings.append(Finding("ok", "data", text))
        paths = [Path(str(p)) for p in index.files[:used]]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            findings.append(
                Finding(
                    "FAIL",
                    "data",
                    f"{d.dataset} {split}: {len(absent):,} of {len(paths):,} image files are "
                    f"missing (first: {absent[0]}); {_fetch_hint(cfg)}",
                )
            )
        present = [p for p in paths if p.is_file()]
        findings.append(_decode_finding(d.dataset, split, which, present, verify, workers))
    return counts


def _decode_finding(
    dataset: str, split: str, which: str, paths: list[Path], verify: bool, workers: int | None
) -> Finding:
    """Decode every image (verify) or SAMPLE evenly spread ones. Training skips an unreadable
    image and counts it (a warning); evaluation stops on one (a failure)."""
    from concurrent.futures import ThreadPoolExecutor

    from mlic.data.images import open_rgb

    if not paths:
        return Finding("info", "data", f"{dataset} {split}: no image files to decode")
    if verify or len(paths) <= SAMPLE:
        chosen, what = paths, f"all {len(paths):,}"
    else:
        step = len(paths) / SAMPLE
        chosen, what = [paths[int(i * step)] for i in range(SAMPLE)], f"{SAMPLE} sampled"

    def unreadable(path: Path) -> str | None:
        try:
            open_rgb(path)
            return None
        except DataError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        bad = [r for r in pool.map(unreadable, chosen) if r]
    if not bad:
        return Finding("ok", "data", f"{dataset} {split}: {what} images decode")
    status = "warn" if which == "train" else "FAIL"
    consequence = "training skips them" if which == "train" else "evaluation stops on them"
    more = "" if verify else " (--verify decodes every image)"
    return Finding(
        status,
        "data",
        f"{dataset} {split}: {len(bad)} of {what} images do not decode ({consequence}){more}; "
        f"first: {bad[0]}",
    )


def _fetch_hint(cfg: Config) -> str:
    d = cfg.data
    if d.dataset in ("coco", "voc") and not d.is_embedded:
        return f"`mlic data {d.dataset} --root {d.resolved_root()} --download` fetches it"
    if d.is_embedded:
        return "`mlic data embedded` generates it"
    return "see docs/gpu.md"


def _listing(index, root: Path) -> str:
    """The file that lists the split's images, relative to the root."""
    source = Path(index.source)
    if index.dataset == "voc":  # the source is Annotations/; the image set file lists the split
        source = source.parent / "ImageSets" / "Main" / f"{index.split}.txt"
    try:
        return str(source.relative_to(root))
    except ValueError:
        return str(source)


# --------------------------------------------------------------------------- weights


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
    from huggingface_hub import try_to_load_from_cache

    for filename in HF_FILES:
        cached = try_to_load_from_cache(repo, filename)
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
        about = (probe or _probe_hub)(repo, HF_FILES[0])
    except Exception as exc:  # any network or hub failure: the run would fail the same way
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        return Finding(
            "FAIL", "weights", f"{m.backbone}: cannot reach {repo} on the hub ({reason}); {hint}"
        )
    return Finding(
        "ok", "weights", f"{m.backbone}: {repo} reachable ({about}), fetched when the run starts"
    )


def _probe_hub(repo: str, filename: str) -> str:
    """A HEAD request for the weight file (no download)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    meta = get_hf_file_metadata(hf_hub_url(repo, filename), timeout=10)
    return f"{filename}, {meta.size / 2**20:,.0f} MiB" if meta.size else filename


# --------------------------------------------------------------------------- GPU and time


def check_gpu(
    configs: Sequence[tuple[str, Config]], counts: dict[tuple, Counts], *, gpus: int = 1
) -> list[Finding]:
    """The card against each run's memory need, and each run's epoch time, from the paper
    model's measurements."""
    import torch

    findings = []
    total_gib = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        total_gib = props.total_memory / 2**30
        n = torch.cuda.device_count()
        findings.append(
            Finding("info", "gpu", f"{n} x {props.name}, {total_gib:.1f} GiB each (GPU 0 checked)")
        )
        if gpus > n:
            findings.append(Finding("FAIL", "gpu", f"--gpus {gpus}, but {n} GPU(s) are visible"))
    else:
        findings.append(
            Finding(
                "warn",
                "gpu",
                f"no CUDA GPU visible (torch {torch.__version__}): the paper presets are for "
                "GPUs; the figures below are for one H200",
            )
        )
    unmeasured = []
    for label, cfg in configs:
        need, how = memory_need(cfg, gpus)
        time = epoch_time(label, cfg, counts.get(_data_key(cfg), Counts()), gpus)
        if need is None and time is None:
            unmeasured.append(label)
            continue
        if need is None:
            findings.append(Finding("info", "gpu", f"{label}: {how}"))
        elif total_gib is None:
            findings.append(
                Finding("info", "gpu", f"{label}: needs {need:.1f} GiB per GPU ({how})")
            )
        elif need <= total_gib - CONTEXT_GIB:
            findings.append(
                Finding("ok", "gpu", f"{label}: needs {need:.1f} GiB per GPU ({how}): fits")
            )
        else:
            findings.append(
                Finding(
                    "FAIL",
                    "gpu",
                    f"{label}: needs {need:.1f} GiB per GPU ({how}), the card has "
                    f"{total_gib:.1f}; split the batch with train.accumulation_steps and/or "
                    "train.activation_checkpointing=all (presets paper-coco-448-24gb, -8gb)",
                )
            )
        findings.append(time or Finding("info", "time", f"{label}: epoch time not measured"))
    if unmeasured:
        findings.append(
            Finding(
                "info",
                "gpu",
                f"no GPU figures for {', '.join(unmeasured)}: only ResNeSt-101e + dual head "
                "(d_model 2048) was measured",
            )
        )
    return findings


def _micro_batch(cfg: Config, gpus: int) -> int:
    return max(1, cfg.train.batch_size // max(gpus, 1) // cfg.train.accumulation_steps)


def _is_measured(cfg: Config) -> bool:
    m = cfg.model
    return measured.is_measured_model(m.backbone, m.head, m.d_model, m.dim_feedforward)


def memory_need(cfg: Config, gpus: int = 1) -> tuple[float | None, str]:
    """(GiB per GPU, how it was obtained) for a training step; None when nothing measured
    applies (another model, partial checkpointing)."""
    m, t = cfg.model, cfg.train
    if not _is_measured(cfg):
        return None, (
            f"no GPU measurement for {m.backbone} + {m.head} head (d_model {m.d_model}); "
            "only ResNeSt-101e + dual head was measured"
        )
    micro, size = _micro_batch(cfg, gpus), cfg.data.image_size
    per_image = measured.PER_IMAGE_GIB_448 * (size / 448) ** 2
    fit = f"{measured.FIXED_GIB} GiB + {per_image:.2f} GiB per image"
    if t.activation_checkpointing == "all":
        need = measured.FIXED_GIB + measured.CHECKPOINT_ALL_FACTOR * per_image * micro
        return need, f"{micro} images per pass, checkpointing all: planned, not measured"
    if t.activation_checkpointing != "none":
        return None, f"activation_checkpointing={t.activation_checkpointing}: not estimated"
    step = measured.train_step(size, micro, compiled=False)
    if step is not None:
        compiled = measured.train_step(size, micro, compiled=True)
        also = f"; compiled {compiled.peak_gib:.1f}" if compiled else ""
        return step.peak_gib, f"{micro} images per pass, eager, {measured.MEASURED_ON}{also}"
    need = measured.FIXED_GIB + per_image * micro
    scaled = f", scaled to {size} px by pixel count" if size != 448 else ""
    return need, f"{micro} images per pass: {fit}{scaled}, projected from the H200 figures"


def epoch_time(label: str, cfg: Config, counts: Counts, gpus: int = 1) -> Finding | None:
    """Time per epoch on one H200: training at the measured step rate plus two evaluations of
    the validation split (the model and its EMA, every epoch); None when nothing measured
    applies."""
    rates = _rates(cfg)
    if rates is None:
        return None
    (train_rate, kind), eval_rate = rates
    epochs = cfg.train.epochs
    full = EXPECTED_IMAGES.get(cfg.data.dataset, {})
    full_counts = (full.get(cfg.data.split("train")), full.get(cfg.data.split("val")))
    n_train = counts.train if counts.train is not None else full_counts[0]
    n_val = counts.val if counts.val is not None else full_counts[1]
    if n_train is None or n_val is None:
        return Finding("info", "time", f"{label}: the splits' sizes are unknown")

    def seconds(n: int, m: int) -> float:
        return n / train_rate + 2 * m / eval_rate

    each = seconds(n_train, n_val)
    text = (
        f"{label}: about {_duration(each)} per epoch, {_duration(each * epochs)} for {epochs} "
        f"epochs on one H200 ({n_train:,} images at {train_rate:.0f}/s {kind} + 2 x {n_val:,} "
        f"evaluated at {eval_rate:.0f}/s)"
    )
    if None not in full_counts and (n_train, n_val) != full_counts and not cfg.data.is_embedded:
        whole = seconds(*full_counts)
        text += f"; the full splits: {_duration(whole)} per epoch, {_duration(whole * epochs)}"
    if gpus > 1:
        text += f"; {gpus} GPUs: at best 1/{gpus} of it (scaling not measured)"
    return Finding("info", "time", text + "; compile time and the loader not included")


def _rates(cfg: Config) -> tuple[tuple[float, str], float] | None:
    """((training images/s, which step), evaluation images/s) measured for this configuration."""
    t, size = cfg.train, cfg.data.image_size
    ev = measured.eval_step(size)
    if not _is_measured(cfg) or ev is None or t.activation_checkpointing != "none":
        return None
    micro = _micro_batch(cfg, 1)
    compiled = t.compile in (True, "auto")  # "auto" compiles on CUDA
    step = measured.train_step(size, micro, compiled)
    kind = "compiled" if compiled else "eager"
    if step is None and compiled:
        step, kind = measured.train_step(size, micro, False), "eager (compiled not measured)"
    if step is None:
        return None
    return (step.images_per_s, kind), ev.images_per_s


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- the screen


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
    d, m, t = cfg.data, cfg.model, cfg.train
    micro = t.batch_size // t.accumulation_steps
    return (
        f"{cfg.name}: {d.dataset} at {d.image_size} px, {m.backbone} + {m.head} head, batch "
        f"{t.batch_size} ({t.accumulation_steps} x {micro}), {t.epochs} epochs"
    )


def plan_configs(
    family: str, data_root: str | None, overrides: Sequence[str] = ()
) -> list[tuple[str, Config]]:
    """The runs `mlic reproduce --preset FAMILY --data-root DIR` would train, as (name, config)."""
    from mlic.config import load_config
    from mlic.plan import runs
    from mlic.reproduce import run_overrides

    out = []
    for run in runs(family):
        cfg = load_config(run.preset, run_overrides(run, family, data_root, overrides))
        out.append((run.name, cfg))
    return out
