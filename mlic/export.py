"""`mlic export`: the deployed network as ONNX or TorchScript, with its input spec beside it.

What is exported: the network evaluation uses - backbone, Transformer encoder, decoder and
classifier - rebuilt without the training-only BatchFormerV2 layer (`deployed_state_dict`),
followed by a sigmoid, so the output is one probability per class (multi-label: never a
softmax). The batch size is dynamic; the image size is fixed at export (the run's, or
`--image-size`). `<file>.json` (e.g. `model.onnx.json`) beside the model says how to prepare the input (size, channel
order, dtype, value range, mean/std), names the classes in output order and carries the run's
tuned thresholds when it has them.

ONNX uses torch's `torch.export`-based exporter (`dynamo=True`, which needs the `onnx` and
`onnxscript` packages: the `export` extra); TorchScript (`torch.jit.trace`, deprecated by
PyTorch 2.14 in favour of `torch.export`, still loadable without mlic) is wrapped in a scripted
shape check, so a wrong input shape is refused with a message rather than silently mis-scored.

`ExportedModel` runs an exported file with the spec's checks (ONNX Runtime or TorchScript), so
that a wrong input gives one line that says what was expected.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from mlic.config_rules import MAX_IMAGE_SIZE, RULES
from mlic.errors import MlicError, OutputError, one_line
from mlic.inference import checkpoint_of, load_trained
from mlic.models.build import build_model
from mlic.outputs import check_out
from mlic.runrecord import atomic_write_text
from mlic.thresholds import read_thresholds, thresholds_path

ExportFormat = Literal["onnx", "torchscript"]
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
SPEC_FORMAT = "mlic-export-1"
INPUT_NAME, OUTPUT_NAME = "images", "scores"


class ExportError(MlicError):
    """An export that cannot be made, or an exported model given input it cannot take."""


class Scores(nn.Module):
    """The deployed network with the sigmoid: images [B, 3, S, S] -> probabilities [B, K]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return torch.sigmoid(self.net(images).float())


class CheckedScores(nn.Module):
    """A shape check in front of a traced network (scripted, so the check is kept as code)."""

    def __init__(self, net: nn.Module, image_size: int) -> None:
        super().__init__()
        self.net = net
        self.image_size = image_size

    def forward(self, images: Tensor) -> Tensor:
        s = self.image_size
        if (
            images.dim() != 4
            or images.shape[1] != 3
            or images.shape[2] != s
            or images.shape[3] != s
        ):
            raise ValueError(
                "mlic: expected float32 images [N, 3, " + str(s) + ", " + str(s) + "] (RGB, "
                "normalised as the .json beside the model says); got " + str(images.shape)
            )
        return self.net(images)


def deployed_network(model: nn.Module) -> nn.Module:
    """The eval-mode network without the BatchFormerV2 layer: rebuilt as the plain transformer
    head and loaded from `deployed_state_dict` (same logits; see the model's docstring)."""
    arch = dict(model.arch)
    if arch["head"] == "dual":
        arch["head"] = "transformer"
        arch.pop("batchformer", None)
    net = build_model(**arch)
    net.load_state_dict(model.deployed_state_dict(), strict=True)
    return net.eval()


def default_out(run_dir: Path | None, checkpoint: Path, fmt: ExportFormat) -> Path:
    base = run_dir / "export" if run_dir is not None else checkpoint.parent
    return base / f"model{SUFFIX[fmt]}"


def spec_path(model_path: str | Path) -> Path:
    """The spec beside a model: `model.onnx` -> `model.onnx.json` (one per exported file)."""
    path = Path(model_path)
    return path.with_name(path.name + ".json")


def export_run(
    path: str | Path,
    *,
    fmt: ExportFormat = "onnx",
    image_size: int | None = None,
    out: str | Path | None = None,
    force: bool = False,
    opset: int = 18,
) -> tuple[Path, Path]:
    """Export a run directory's (or checkpoint's) deployed network; returns (model, spec) paths.
    Both files are written atomically: a failed export (a full disk included) leaves neither.
    An `out` (or the spec beside it) that is an input or a run record's file is refused, an
    existing one replaced only with `force`; the default files under <run>/export/ always."""
    if fmt not in SUFFIX:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(SUFFIX)}")
    if image_size is not None:  # bounded like data.image_size (0 is refused, not the default)
        rule = RULES["data.image_size"]
        problem = rule.problem(image_size)
        if problem:
            why = f" {rule.why}" if image_size > MAX_IMAGE_SIZE else " (the backbone's stride 32)"
            raise ExportError(f"--image-size {image_size} {problem}{why}")
    ckpt_path, run_dir = checkpoint_of(path)
    default = default_out(run_dir, ckpt_path, fmt)
    out_path = Path(out) if out else default
    read = [ckpt_path] + ([run_dir / "config.yaml", thresholds_path(run_dir)] if run_dir else [])
    for target in (out_path, spec_path(out_path)):
        check_out(target, inputs=read, owned=[default, spec_path(default)], force=force)
    trained = load_trained(path, device="cpu")
    size = int(image_size or trained.cfg.data.image_size)
    net = Scores(deployed_network(trained.model)).eval()
    example = torch.zeros(2, 3, size, size)
    tmp: Path | None = None
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp"
        )
        os.close(fd)
        tmp = Path(tmp_name)
        if fmt == "onnx":
            _export_onnx(net, example, tmp, opset)
        else:
            _export_torchscript(net, example, tmp, size)
        tuned = None
        if trained.run_dir is not None and os.path.lexists(thresholds_path(trained.run_dir)):
            record = read_thresholds(thresholds_path(trained.run_dir), trained)
            tuned = {"thresholds": record["thresholds"], "chosen_on": record["chosen_on"]}
        spec = input_spec(
            trained, fmt, size, out_path.name, tuned, opset if fmt == "onnx" else None
        )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; a model is for sharing
        # The spec first: if it cannot be written, the model that was there stays unreplaced.
        atomic_write_text(spec_path(out_path), json.dumps(spec, indent=2) + "\n")
        os.replace(tmp, out_path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        cause = None if isinstance(exc, MlicError) else _os_error(exc)
        if cause is not None:  # a full or read-only disk: the same line for both formats
            raise OutputError(
                f"{out_path}: cannot write ({cause.strerror or type(cause).__name__})"
            ) from None
        raise
    return out_path, spec_path(out_path)


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind an exporter's failure (its own exceptions wrap it), if any."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _export_onnx(net: nn.Module, example: Tensor, path: Path, opset: int) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs both; say so plainly if missing)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the packages onnx and onnxscript ({exc.name} is missing): "
            "pip install -e '.[export]'"
        ) from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    quiet = io.StringIO()
    try:
        for lg in loggers:  # the exporter logs its progress and optimiser notes
            lg.setLevel(logging.ERROR)
        with (
            contextlib.redirect_stdout(quiet),
            contextlib.redirect_stderr(quiet),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (example,),
                str(path),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"images": {0: batch}},
                opset_version=opset,
                external_data=False,
            )
    except OSError:
        raise  # writing the file failed: export_run says so as for TorchScript
    except Exception as exc:  # the exporter's failures are long; keep the first line
        if _os_error(exc) is not None:
            raise
        raise ExportError(f"ONNX export failed: {one_line(exc)[:300]}") from None
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_torchscript(net: nn.Module, example: Tensor, path: Path, size: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # jit's deprecation notice and tracer warnings
        traced = torch.jit.trace(net, example)
        checked = torch.jit.script(CheckedScores(traced, size))
        # Into memory first: torch.jit.save's C++ writer aborts the process when the disk is
        # full; Python's write raises an OSError that export_run turns into one line.
        buffer = io.BytesIO()
        torch.jit.save(checked, buffer)
    with open(path, "wb") as handle:
        handle.write(buffer.getbuffer())
        handle.flush()
        os.fsync(handle.fileno())


def input_spec(
    trained, fmt: str, size: int, file_name: str, tuned: dict | None, opset: int | None
) -> dict[str, Any]:
    """What a deployment needs to feed the model and read its output."""
    data = trained.cfg.data
    return {
        "format": SPEC_FORMAT,
        "model_file": file_name,
        "model_format": fmt,
        **({"onnx_opset": opset} if opset else {}),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "layout": "NCHW",
            "dtype": "float32",
            "channel_order": "RGB",
            "resize": f"to {size}x{size} ignoring the aspect ratio (bilinear, antialiased)",
            "value_range": "pixels / 255 in [0, 1], then (x - mean) / std per channel",
            "mean": list(data.mean),
            "std": list(data.std),
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(trained.class_names)],
            "meaning": "sigmoid probability per class (independent; not a softmax)",
        },
        "class_names": list(trained.class_names),
        "default_threshold": 0.5,
        "tuned_thresholds": tuned,
        "source": {
            "checkpoint": str(trained.checkpoint),
            "epoch": trained.epoch,
            "weights": trained.weights,
            "backbone": trained.cfg.model.backbone,
            "head": trained.cfg.model.head,
        },
    }


# --------------------------------------------------------------------------- running an export


class ExportedModel:
    """An exported model with its spec: `scores(images)` checks the input against the spec
    first, so a wrong shape or dtype is one line saying what was expected."""

    def __init__(self, model_path: str | Path) -> None:
        self.path = Path(model_path)
        sp = spec_path(self.path)
        try:
            self.spec = json.loads(sp.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExportError(f"{sp}: cannot read the model's spec ({one_line(exc)})") from None
        if self.spec.get("format") != SPEC_FORMAT:
            raise ExportError(f"{sp}: not an mlic export spec (format {SPEC_FORMAT!r})")
        self.size = int(self.spec["input"]["shape"][2])
        self.class_names = list(self.spec["class_names"])
        if not self.path.is_file():
            raise ExportError(f"{self.path}: exported model not found")
        if self.spec["model_format"] == "onnx":
            import onnxruntime as ort  # optional: the `export` extra

            try:
                self._session = ort.InferenceSession(
                    str(self.path), providers=["CPUExecutionProvider"]
                )
            except Exception as exc:
                raise ExportError(
                    f"{self.path}: ONNX Runtime cannot load it ({one_line(exc)[:200]})"
                ) from None
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._module = torch.jit.load(str(self.path), map_location="cpu")

    def check(self, images: np.ndarray) -> None:
        want = ["N", 3, self.size, self.size]
        shape = list(images.shape)
        if images.ndim != 4 or shape[1:] != want[1:] or shape[0] < 1:
            raise ExportError(
                f"{self.path}: expects images of shape {want} (float32, RGB, NCHW, normalised "
                f"as {spec_path(self.path).name} says); got {shape}"
            )
        if images.dtype != np.float32:
            raise ExportError(f"{self.path}: expects float32 images; got {images.dtype}")

    def scores(self, images: np.ndarray | Tensor) -> np.ndarray:
        """Probabilities [N, K] for prepared images [N, 3, S, S] (float32)."""
        array = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
        self.check(array)
        if self.spec["model_format"] == "onnx":
            try:
                return self._session.run([OUTPUT_NAME], {INPUT_NAME: array})[0]
            except Exception as exc:
                raise ExportError(
                    f"{self.path}: ONNX Runtime refused the input ({one_line(exc)[:300]})"
                ) from None
        with torch.no_grad():
            return self._module(torch.from_numpy(array)).numpy()
