"""What each `mlic` command does, once `mlic.cli` has parsed its arguments.

Each command imports what it needs when it runs, so that `mlic --help` and the light commands
stay fast (torch alone takes seconds to import).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mlic.errors import MlicError


def config_from_args(args):
    """The run configuration that --preset/--config, --set and --data-root describe."""
    from mlic.config import load_config

    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    return load_config(args.preset, overrides, path=args.config)


def cmd_presets(args) -> None:
    from mlic.config import preset_summaries

    summaries = preset_summaries()
    width = max(map(len, summaries))
    for name, text in summaries.items():
        print(f"{name:<{width}}  {text}")


def cmd_data_embedded(args) -> None:
    from mlic.data import ensure_embedded, generate_embedded

    root = Path(args.root)
    sizes = {} if args.num_train is None else {"num_train": args.num_train}
    if args.force:
        summary = generate_embedded(root, seed=args.seed, **sizes)
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        ensure_embedded(root, seed=args.seed, **sizes)
    print(
        f"embedded dataset ready: {root / 'coco'}, {root / 'voc' / 'VOC2007'} "
        f"and the pretext tree {root / 'pretext'}"
    )


def cmd_data_stats(args) -> None:
    from mlic.data import dataset_stats

    stats = dataset_stats(args.dataset, Path(args.root), args.split, verify=args.verify)
    print(json.dumps(stats, indent=2))


def cmd_train(args) -> None:
    from mlic.runrecord import check_new_run

    # Before importing torch: a bad value or an occupied run directory is refused at once.
    cfg = config_from_args(args)
    run_dir = Path(args.run_dir or Path("results") / "runs" / cfg.name)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 owns the run directory
        check_new_run(run_dir, resume=args.resume, overwrite=args.overwrite)
    from mlic.fit import fit

    metrics = fit(cfg, run_dir, resume=args.resume, overwrite=args.overwrite)
    best, last = metrics["best"], metrics["last"]
    print(
        f"{run_dir}: mAP {metrics['map']:.2f} % ({metrics['weights']} weights, best epoch "
        f"{best['epoch']} of {metrics['epochs']}; last epoch {last['map']:.2f} %) on "
        f"{metrics['dataset']}/{metrics['split']}, {metrics['num_images']} images"
    )


def cmd_evaluate(args) -> None:
    from mlic.evaluate import evaluate_checkpoint

    m = evaluate_checkpoint(
        args.path,
        split=args.split,
        data_root=args.data_root,
        device=args.device,
        max_images=args.max_images,
    )
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return
    print(
        f"{m['checkpoint']} ({m['weights']} weights, epoch {m['epoch']}) on "
        f"{m['dataset']}/{m['split']}, "
        f"{m['num_images']} images at {m['image_size']} px, {m['device']}"
    )
    print(f"  mAP {m['map']:.2f} %  over {m['num_classes_evaluated']} classes")
    tuned = m.get("tuned")
    if not tuned or "unavailable" in tuned:
        print(
            "  "
            + "  ".join(f"{k.upper()} {m[k]:.2f}" for k in ("cp", "cr", "cf1", "op", "or", "of1"))
        )
    if tuned and "unavailable" in tuned:
        print(f"  tuned thresholds not used: {tuned['unavailable']}")
    elif tuned:
        keys = ("cp", "cr", "cf1", "op", "or", "of1")
        print(f"  {'':<8}" + "".join(f"{k.upper():>8}" for k in keys))
        for label, row in (("at 0.5", m), ("tuned", tuned)):
            cells = "".join(f"{row[k]:8.2f}" if row[k] is not None else f"{'-':>8}" for k in keys)
            print(f"  {label:<8}{cells}")
        note = " (this split: optimistic)" if tuned["chosen_on_this_split"] else ""
        print(f"  tuned thresholds chosen on {tuned['chosen_on']}{note}")
    print(f"  {m['images_per_s']:.1f} images/s")


def cmd_data_to_csv(args) -> None:
    from mlic.data import read_split
    from mlic.data.csv_dataset import write_csv_split
    from mlic.outputs import check_out

    index = read_split(args.dataset, Path(args.root), args.split).head(args.max_images)
    check_out(args.out, inputs=index.input_paths(), force=args.force)
    path = write_csv_split(index, Path(args.out))
    print(f"{path}: {index.num_images} images, {index.num_classes} classes")


def cmd_data_download(args) -> int:
    from mlic.data.download import prepare

    root = Path(args.root)
    missing = prepare(
        args.dataset,
        root,
        download=args.download,
        archive_dir=args.archives,
        keep_archives=args.keep_archives,
        mirror=args.mirror,
    )
    if missing:
        print(f"{len(missing)} archive(s) missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    preset = "paper-coco-448" if args.dataset == "coco" else "paper-voc-448"
    print(
        f"{args.dataset} ready in {root}; next: mlic data check --preset {preset} "
        f"--data-root {root}"
    )
    return 0


def cmd_data_check(args) -> int:
    from mlic import preflight

    if args.gpus < 1:
        raise MlicError(f"--gpus {args.gpus}: at least 1")
    if args.preset == "paper" and not args.config:  # the plan of `mlic reproduce --preset paper`
        configs = preflight.plan_configs("paper", args.data_root, args.overrides)
        title = f"mlic data check: the paper plan ({len(configs)} runs) on {args.data_root}"
    else:
        cfg = config_from_args(args)
        configs = [(cfg.name, cfg)]
        title = f"mlic data check: {preflight.describe(cfg)}"
    findings = preflight.check_configs(configs, verify=args.verify, gpus=args.gpus)
    print(preflight.render(title, findings))
    return 1 if any(f.status == "FAIL" for f in findings) else 0


def cmd_predict(args) -> None:
    from mlic.predict import run_predict

    run_predict(
        args.path,
        args.inputs,
        threshold=args.threshold,
        thresholds=args.thresholds,
        top_k=args.top_k,
        fmt=args.format,
        out=args.out,
        force=args.force,
        batch_size=args.batch_size,
        device=args.device,
    )


def cmd_calibrate(args) -> None:
    from mlic.inference import load_trained
    from mlic.thresholds import calibrate, describe

    data = {"root": args.data_root} if args.data_root else {}
    trained = load_trained(args.path, device=args.device, data=data)
    out = Path(args.out) if args.out else None
    record, path = calibrate(trained, split=args.split, out=out, force=args.force)
    print(f"{describe(record)} -> {path}")
    m = record["metrics_on_chosen_images"]
    cells = (
        f"{k.upper()} {'-' if m[k] is None else format(m[k], '.2f')}"
        for k in ("cp", "cr", "cf1", "op", "or", "of1")
    )
    print("  on those images (optimistic): " + "  ".join(cells))


def cmd_export(args) -> None:
    from mlic.export import export_run

    model, spec = export_run(
        args.path, fmt=args.format, image_size=args.image_size, out=args.out, force=args.force
    )
    print(f"{model}\n{spec}")


def cmd_reproduce(args) -> None:
    from mlic.reproduce import reproduce

    reproduce(
        family=args.preset,
        results=Path(args.results),
        data_root=args.data_root,
        only=args.only,
        seeds=args.seeds,
        overrides=args.overrides,
        gpus=args.gpus,
        retrain=args.retrain,
        jobs=args.jobs,
    )


def cmd_report(args) -> None:
    from mlic.report import build_report, update_readme

    out = build_report(Path(args.results) / "runs", Path(args.results), family=args.preset)
    if args.readme:
        update_readme(Path(args.readme), Path(args.results))
    for paths in out["tables"].values():
        for path in paths:
            print(path)
    for path in out["figures"].values():
        print(path)
    for name, reason in sorted(out["missing"].items()):
        print(f"missing run record: {name} ({reason})", file=sys.stderr)
