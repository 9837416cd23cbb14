"""`mlic ...` / `python -m mlic ...`: the only place that parses arguments.

User errors (`MlicError`) are printed as one line and exit with status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlic import commands
from mlic.errors import MlicError


def main(argv: list[str] | None = None) -> int:
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            parser.print_help()
            return 0
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that left (`| head`) shows here, not at exit
        return code
    except BrokenPipeError:  # the reader has all it wanted: end quietly, as `cat | head` does
        _stdout_to_devnull()
        return 0
    except MlicError as exc:
        print(f"mlic: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment (a full or read-only disk), not a bug: one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mlic: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlic: interrupted", file=sys.stderr)
        return 130


def _stdout_to_devnull() -> None:
    """Python's recipe for SIGPIPE: point stdout at devnull so the flush at exit writes nowhere
    instead of raising again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no file (a notebook, a test)
        pass


FORCE_HELP = "replace an existing --out file (never an input of the command or a run record's file)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlic",
        description="Replication of Wang & Zhang (2024): ResNeSt + dual-branch Transformer "
        "for multi-label image classification.",
    )
    sub = p.add_subparsers(metavar="COMMAND")

    s = sub.add_parser("presets", help="list the configuration presets")
    s.set_defaults(func=commands.cmd_presets)

    data = sub.add_parser("data", help="generate or inspect datasets")
    data_sub = data.add_subparsers(metavar="ACTION", required=True)
    s = data_sub.add_parser("embedded", help="generate the embedded dataset (COCO and VOC layouts)")
    s.add_argument("--root", default="data/embedded", help="output folder (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="regenerate even if complete")
    s.add_argument(
        "--num-train",
        type=int,
        default=None,
        metavar="N",
        help="training images of the COCO tree (default: what a complete dataset there has, "
        "else 3500); runs read a dataset elsewhere through data.embedded_root=ROOT",
    )
    s.set_defaults(func=commands.cmd_data_embedded)
    s = data_sub.add_parser("stats", help="print a split's statistics as JSON")
    s.add_argument("--dataset", choices=["coco", "voc", "csv"], required=True)
    s.add_argument(
        "--root",
        required=True,
        help="folder holding annotations/ (COCO), VOC2007/ (VOC) or <split>.csv (csv)",
    )
    s.add_argument("--split", required=True, help="e.g. train2014, val2014, trainval, test")
    s.add_argument("--verify", action="store_true", help="decode every image, list unreadable ones")
    s.set_defaults(func=commands.cmd_data_stats)
    s = data_sub.add_parser(
        "to-csv",
        help="write a COCO/VOC split as a CSV dataset file (the format of data.dataset=csv)",
    )
    s.add_argument("--dataset", choices=["coco", "voc", "csv"], required=True)
    s.add_argument("--root", required=True, help="the dataset folder, as for `data stats`")
    s.add_argument("--split", required=True)
    s.add_argument(
        "--out", required=True, help="the CSV file; image paths are relative to its folder"
    )
    s.add_argument("--max-images", type=int, default=0, help="only the first N images")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    s.set_defaults(func=commands.cmd_data_to_csv)
    _add_download_parsers(data_sub)
    s = data_sub.add_parser(
        "check",
        help="before training: what a run needs and what is missing (annotations, images, "
        "backbone weights, GPU memory, epoch time); builds no model",
        description="One screen of what a run needs and what is missing; exit status 1 if "
        "anything is. --preset paper checks every run of `mlic reproduce --preset paper "
        "--data-root DIR` (DIR holding coco/ and voc/VOC2007/).",
    )
    _add_config_args(s)
    s.set_defaults(preset="paper-coco-448")
    s.add_argument(
        "--verify", action="store_true", help="decode every image (default: a sample per split)"
    )
    s.add_argument("--gpus", type=int, default=1, help="GPUs the run will use (torchrun processes)")
    s.set_defaults(func=commands.cmd_data_check)

    s = sub.add_parser("train", help="train one configuration and write its run record")
    _add_config_args(s)
    s.add_argument("--run-dir", help="default: results/runs/<config name>")
    again = s.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue from the run's last checkpoint"
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run record already in the run directory (refused without this)",
    )
    s.set_defaults(func=commands.cmd_train)

    s = sub.add_parser("evaluate", help="evaluate a run directory or a checkpoint")
    s.add_argument("path", help="a run directory (uses checkpoints/best.pt) or a .pt file")
    s.add_argument("--split", help="default: the run's validation split")
    s.add_argument("--data-root", help="dataset folder, if not the one the run used")
    s.add_argument("--device", default="auto")
    s.add_argument("--max-images", type=int, default=0, help="only the first N images")
    s.add_argument("--json", action="store_true", help="print all metrics as JSON")
    s.set_defaults(func=commands.cmd_evaluate)

    s = sub.add_parser("predict", help="score your own images with a trained run")
    s.add_argument("path", help="a run directory (uses checkpoints/best.pt) or a .pt file")
    s.add_argument("inputs", nargs="+", help="image files, folders (recursive) or glob patterns")
    which = s.add_mutually_exclusive_group()
    which.add_argument(
        "--threshold", type=float, help="one score threshold for every class (default 0.5)"
    )
    which.add_argument(
        "--thresholds",
        metavar="tuned|FILE",
        help="per-class thresholds: 'tuned' = the run's thresholds.json (mlic calibrate)",
    )
    s.add_argument("--top-k", type=int, default=0, help="at most K labels per image (0: no limit)")
    s.add_argument("--format", choices=["table", "csv", "json", "jsonl"], default="table")
    s.add_argument("--out", help="write here (atomically) instead of to standard output")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    s.add_argument("--batch-size", type=int, help="default: the run's train.eval_batch_size")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=commands.cmd_predict)

    s = sub.add_parser(
        "calibrate", help="choose per-class thresholds (max F1) and write thresholds.json"
    )
    s.add_argument("path", help="a run directory (or a .pt file inside <run>/checkpoints/)")
    s.add_argument(
        "--split",
        help="choose them on this split of the run's dataset (default: the run's rule, "
        "data.calibration_fraction: a held-out part of training, or the validation split)",
    )
    s.add_argument("--data-root", help="dataset folder, if not the one the run used")
    s.add_argument("--out", help="default: <run>/thresholds.json")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=commands.cmd_calibrate)

    s = sub.add_parser("export", help="export the deployed network (ONNX or TorchScript)")
    s.add_argument("path", help="a run directory (uses checkpoints/best.pt) or a .pt file")
    s.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    s.add_argument("--image-size", type=int, help="default: the run's data.image_size")
    s.add_argument(
        "--out", help="default: <run>/export/model.onnx (or .torchscript.pt); a .json goes beside"
    )
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    s.set_defaults(func=commands.cmd_export)

    s = sub.add_parser(
        "reproduce", help="train every configuration of the paper's tables, then report"
    )
    s.add_argument("--preset", choices=["embedded", "paper"], default="embedded")
    s.add_argument("--data-root", help="paper: folder holding coco/ and voc/VOC2007/")
    s.add_argument(
        "--only",
        action="append",
        help="table1..table4, figures or budget (repeatable; default: all but budget)",
    )
    s.add_argument("--seeds", type=int, default=1, help="seeds per configuration")
    s.add_argument("--results", default="results", help="default: %(default)s")
    _add_overrides(s, "overrides applied to every run (e.g. train.epochs=1)")
    s.add_argument(
        "--gpus", type=int, default=None, help="run independent configurations on N GPUs"
    )
    s.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="configurations trained at once on the CPU, the cores split between them "
        "(default: 2 for the embedded plan on a CPU with 2 or more cores, else 1)",
    )
    s.add_argument(
        "--retrain",
        action="store_true",
        help="delete the planned runs' records and train them all again (default: skip runs "
        "whose record is complete and of the same configuration)",
    )
    s.set_defaults(func=commands.cmd_reproduce)

    s = sub.add_parser("report", help="rebuild tables and figures from the run records alone")
    s.add_argument("--results", default="results", help="default: %(default)s")
    s.add_argument("--preset", choices=["embedded", "paper"], default="embedded")
    s.add_argument(
        "--readme",
        metavar="FILE",
        help="also write the tables and figures between the results markers of this Markdown "
        "file, image links relative to it (this project's results page: docs/results.md)",
    )
    s.set_defaults(func=commands.cmd_report)
    return p


def _add_download_parsers(data_sub) -> None:
    """`mlic data coco|voc`: the paper's datasets, fetched and laid out as the presets read them."""
    what = {
        "coco": ("COCO 2014 (train2014, val2014, annotations; 19 GiB)", "ROOT/{annotations,"
                 "train2014,val2014}: the folder paper-coco-* presets take as --data-root"),
        "voc": ("PASCAL VOC 2007 (trainval, test; 0.9 GiB)", "ROOT/VOC2007: the folder "
                "paper-voc-448 takes as --data-root"),
    }  # fmt: skip
    for name, (title, layout) in what.items():
        s = data_sub.add_parser(
            name,
            help=f"download, verify and unpack {title}",
            description=f"Lays out {layout}. Without --download only archives already in the "
            "archive folder are verified and unpacked; a rerun skips what is complete.",
        )
        s.add_argument("--root", required=True, help="the dataset folder (e.g. /data/" + (
            "coco)" if name == "coco" else "voc)"))  # fmt: skip
        s.add_argument("--download", action="store_true", help="fetch missing archives (resumable)")
        s.add_argument("--archives", metavar="DIR", help="archive folder (default: ROOT/archives)")
        s.add_argument(
            "--keep-archives",
            action="store_true",
            help="keep each archive after unpacking (default: remove it)",
        )
        s.add_argument(
            "--mirror",
            metavar="URL",
            help="fetch each archive from URL/<archive name> (a copy of the official files: "
            "the same checksums are checked)",
        )
        s.set_defaults(func=commands.cmd_data_download, dataset=name)


def _add_config_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--preset", default="embedded", help="see `mlic presets` (default: %(default)s)")
    s.add_argument("--config", help="a resolved config.yaml instead of a preset")
    _add_overrides(s, "overrides, e.g. model.backbone=resnet101 train.epochs=3")
    s.add_argument("--data-root", help="shorthand for --set data.root=DIR")


def _add_overrides(s: argparse.ArgumentParser, help_text: str) -> None:
    s.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides", help=help_text
    )
