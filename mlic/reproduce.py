"""`mlic reproduce`: run the training notebook once per configuration of the plan (papermill),
then build the tables and figures from the run records.

papermill fails quietly in three ways; each is guarded here: unknown
parameter names are refused, parameters are passed as built-in types only, and a notebook
without exactly one `parameters` cell is refused before anything runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from mlic import pretext
from mlic.config import load_config
from mlic.data.embedded import ensure_embedded
from mlic.errors import ConfigError, MlicError
from mlic.plan import PlannedRun, pretext_run_for, pretext_runs, runs
from mlic.runrecord import atomic_write_text, read_metrics, stale_data

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
TRAIN_NOTEBOOK = NOTEBOOKS / "train.ipynb"
REPORT_NOTEBOOKS = ("tables.ipynb", "figures.ipynb")
KERNEL = "python3"


def run_overrides(
    run: PlannedRun,
    family: str,
    data_root: str | None,
    extra: Sequence[str],
    results: Path = Path("results"),
) -> list[str]:
    """The planned run's overrides as `key=value` strings, then the data root and the pretext
    backbone it loads (embedded family), then the user's."""
    overrides = [f"{k}={_yaml_value(v)}" for k, v in run.overrides.items()]
    if is_pretext(run):
        return overrides + list(extra)  # its data is the embedded pretext tree, always
    if data_root:
        dataset = run.overrides.get("data.dataset") or load_config(run.preset).data.dataset
        overrides.append(f"data.root={Path(data_root) / dataset}")
    elif family == "paper":
        raise MlicError("the paper runs need --data-root DIR (holding coco/ and voc/VOC2007/)")
    pretext_run = pretext_run_for(run)
    if pretext_run:
        weights = pretext.weights_path(Path(results) / "runs" / pretext_run)
        overrides.append(f"model.pretrained_file={notebook_path(weights)}")
    overrides.append(f"name={run.name}")
    return overrides + list(extra)


def is_pretext(run: PlannedRun) -> bool:
    return run.name.startswith(pretext.PREFIX)


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def recorded_config_matches(run_dir: Path, preset: str, overrides: list[str]) -> bool | None:
    """Whether the run's config.yaml equals the configuration wanted now; None without one.

    The record is read as the present code resolves it, so a key added since it was written
    takes its default (which keeps the old behaviour) instead of making every record stale."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    try:
        recorded = load_config(path=config).to_dict()
    except ConfigError:  # a record the present rules refuse is trained again
        return False
    return recorded == load_config(preset, overrides).to_dict()


def is_complete(run_dir: Path, preset: str, overrides: list[str]) -> bool:
    """A run is skipped only when its record is complete, was made by the same config and, on
    the embedded data, by the present generator (a new version redraws every image)."""
    metrics = read_metrics(run_dir)
    return (
        metrics is not None
        and stale_data(metrics) is None
        and bool(recorded_config_matches(run_dir, preset, overrides))
    )


def check_parameters(notebook: Path, names: set[str]) -> None:
    """Refuse a notebook with no (or several) `parameters` cells, and unknown parameter names."""
    import nbformat
    import papermill

    nb = nbformat.read(notebook, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise MlicError(
            f"{notebook}: needs exactly one cell tagged 'parameters', has {len(tagged)}"
        )
    known = set(papermill.inspect_notebook(str(notebook)))
    unknown = sorted(names - known)
    if unknown:
        raise MlicError(f"{notebook}: unknown parameter(s) {', '.join(unknown)}")


def execute_notebook(notebook: Path, output: Path, parameters: dict[str, Any], label: str) -> None:
    """Execute with papermill in the repository root; a failure names the run and the cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    check_parameters(notebook, set(parameters))
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            kernel_name=KERNEL,
            cwd=str(REPO_ROOT),
            progress_bar=False,
        )
        normalize_executed(output)
    except PapermillExecutionError as exc:
        raise MlicError(
            f"{label}: {notebook.name} failed in cell {exc.exec_count} "
            f"({exc.ename}: {exc.evalue.strip().splitlines()[0] if exc.evalue.strip() else ''}); "
            f"the executed notebook is kept at {output}"
        ) from None


# The clock times papermill and the kernel record in an executed notebook: they change on every
# execution, so a fresh clone's `mlic reproduce` would rewrite committed notebooks that show the
# same results. The run records keep the durations that matter (wall_seconds, seconds per epoch).
_CLOCK_KEYS = ("start_time", "end_time", "duration")


def normalize_executed(executed: Path) -> None:
    """Write the machine and the clock out of an executed notebook: papermill records the
    absolute input/output paths and each cell's times, the kernel its execution timestamps, and
    warnings print absolute file names (e.g. a package in .venv). The committed results then say
    nothing about the machine that made them, and executing again gives the same bytes."""
    root = f"{REPO_ROOT.as_posix()}/"
    nb = json.loads(executed.read_text(encoding="utf-8"))
    meta = nb.get("metadata", {}).get("papermill", {})
    for key in ("input_path", "output_path"):
        if isinstance(meta.get(key), str):
            meta[key] = meta[key].replace(root, "")
    for key in _CLOCK_KEYS:
        meta.pop(key, None)
    for cell in nb.get("cells", []):
        cell_meta = cell.get("metadata", {})
        cell_meta.pop("execution", None)
        if "injected-parameters" in cell_meta.get("tags", []):  # papermill gives it a random id
            cell["id"] = "injected-parameters"
        for key in _CLOCK_KEYS:
            cell_meta.get("papermill", {}).pop(key, None)
        if "outputs" in cell:
            cell["outputs"] = _coalesced_streams(cell["outputs"])
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = out["text"].replace(root, "").splitlines(keepends=True)
    atomic_write_text(executed, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def _coalesced_streams(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adjacent outputs of one stream (stdout, stderr) as one output with one string. The
    kernel sends a cell's prints in as many messages as its flush timer cuts them into, so the
    same prints came back as one output or two depending on the machine's load; merged, a
    re-execution gives the same bytes. (nbconvert's CoalesceStreamsPreprocessor merges them
    too, but also rewrites carriage-return progress lines, and the runner does not need it.)"""
    merged: list[dict[str, Any]] = []
    for out in outputs:
        if out.get("output_type") != "stream":
            merged.append(out)
            continue
        text = out.get("text", "")
        text = "".join(text) if isinstance(text, list) else str(text)
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.get("output_type") == "stream"
            and last.get("name") == out.get("name")
        ):
            last["text"] += text
        else:
            merged.append({**out, "text": text})
    return merged


def notebook_path(path: Path) -> str:
    """A path as a notebook parameter: relative to the repository root (papermill runs there)
    when inside it, so an executed notebook in results/executed/ names no machine's folders."""
    path = Path(path).resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def train_one(run_name: str, preset: str, overrides: list[str], results: Path) -> None:
    """One planned run through the training notebook (also the entry point of GPU workers)."""
    run_dir = results / "runs" / run_name
    execute_notebook(
        TRAIN_NOTEBOOK,
        results / "executed" / f"train-{run_name}.ipynb",
        {"preset": preset, "overrides": list(overrides), "run_dir": notebook_path(run_dir)},
        label=f"run {run_name}",
    )


def reproduce(
    family: str = "embedded",
    results: Path = Path("results"),
    data_root: str | None = None,
    only: Sequence[str] | None = None,
    seeds: int = 1,
    overrides: Sequence[str] = (),
    gpus: int | None = None,
    retrain: bool = False,
    jobs: int | None = None,
) -> None:
    """Train what is missing, then rebuild tables and figures (written under `results`).

    `retrain=True` deletes every planned run's record and trains it again from scratch (a fresh
    clone's committed records are complete, so without it nothing is trained). `jobs` runs that
    many configurations at once on the CPU, the cores split between them (None: `auto_jobs`)."""
    if gpus is not None and gpus < 1:
        raise MlicError(f"--gpus {gpus}: needs at least one GPU (leave it out for one process)")
    if jobs is not None and jobs < 1:
        raise MlicError(f"--jobs {jobs}: needs at least 1")
    results = Path(results).resolve()
    plan = runs(family, seeds=seeds, only=list(only) if only else None)
    todo = _to_train(plan, family, data_root, overrides, results, retrain)
    # The pretext runs whose backbones the runs to train load: first, and only when needed.
    needed = pretext_runs(family, needed=[run for run, _ in todo])
    first = _to_train(needed, family, data_root, overrides, results, retrain)
    if first:
        ensure_embedded(load_config(first[0][0].preset).data.embedded_root)
    start = time.perf_counter()
    slots = _slots(gpus, jobs if jobs is not None else auto_jobs(family, gpus))
    for stage in (first, todo):  # the pretext backbones before the runs that load them
        if len(slots) == 1:
            for i, (run, ovr) in enumerate(stage, 1):
                _announce(i, len(stage), run, start)
                train_one(run.name, run.preset, ovr, results)
        else:
            _train_in_parallel(stage, results, slots, start)
        for run, _ in stage:
            if is_pretext(run):
                pretext.write_backbone_weights(results / "runs" / run.name)
    trained = len(first) + len(todo)
    print(f"trained {trained} run(s) in {time.perf_counter() - start:.0f} s", flush=True)
    build_outputs(results, family)


def auto_jobs(family: str, gpus: int | None) -> int:
    """Runs at once when --jobs is not given: two for the embedded plan on a CPU with two or
    more cores, else one. The embedded runs are small enough that two single-thread runs
    train about 1.2x as many images a second as one run on both cores (docs/performance.md)."""
    if family != "embedded" or gpus is not None or len(os.sched_getaffinity(0)) < 2:
        return 1
    import torch

    return 1 if torch.cuda.is_available() else 2


def _slots(gpus: int | None, jobs: int) -> list[dict[str, str]]:
    """The environment of each worker: one per GPU (CUDA_VISIBLE_DEVICES), else one per job
    with its share of the cores (OMP_NUM_THREADS, which `train.num_threads: auto` follows)."""
    if gpus is not None:
        return [{"CUDA_VISIBLE_DEVICES": str(slot)} for slot in range(gpus)]
    if jobs == 1:
        return [{}]
    threads = max(1, len(os.sched_getaffinity(0)) // jobs)
    return [{"OMP_NUM_THREADS": str(threads)} for _ in range(jobs)]


def _to_train(
    planned: list[PlannedRun],
    family: str,
    data_root: str | None,
    overrides: Sequence[str],
    results: Path,
    retrain: bool,
) -> list[tuple[PlannedRun, list[str]]]:
    out = []
    for run in planned:
        ovr = run_overrides(run, family, data_root, overrides, results)
        if _needs_training(run, ovr, results, retrain):
            out.append((run, ovr))
    return out


def _needs_training(run: PlannedRun, ovr: list[str], results: Path, retrain: bool) -> bool:
    """Whether `run` is to be trained; deletes a record that is to be replaced. A record of the
    same configuration that did not finish is kept: the training notebook resumes it. A finished
    pretext run also needs its backbone weight file (not committed, like the checkpoints)."""
    run_dir = results / "runs" / run.name
    matches = recorded_config_matches(run_dir, run.preset, ovr)
    metrics = read_metrics(run_dir) if matches else None
    finished = metrics is not None
    stale = stale_data(metrics) if metrics is not None else None
    if retrain and run_dir.exists():
        print(f"[retrain] {run.name}: deleting its record to train it again", flush=True)
        shutil.rmtree(run_dir)
    elif stale:
        print(
            f"[redo] {run.name}: trained on embedded data of generator version {stale[0]}, "
            f"the generator is now version {stale[1]}",
            flush=True,
        )
        shutil.rmtree(run_dir)
    elif finished and is_pretext(run) and not pretext.weights_path(run_dir).is_file():
        print(f"[redo] {run.name}: its backbone weight file is not on disk", flush=True)
        shutil.rmtree(run_dir)
    elif finished:
        print(f"[skip] {run.name}: complete run record with the same configuration", flush=True)
        return False
    elif matches is False:
        # A record of another configuration (the plan or the preset changed): retrain.
        print(f"[redo] {run.name}: its record was made with another configuration", flush=True)
        shutil.rmtree(run_dir)
    return True


def _announce(i: int, n: int, run: PlannedRun, start: float) -> None:
    _say(f"[{i}/{n}] {run.name} ({time.perf_counter() - start:.0f} s elapsed)")


def _train_in_parallel(
    todo: list[tuple[PlannedRun, list[str]]],
    results: Path,
    slots: list[dict[str, str]],
    start: float,
) -> None:
    """Independent runs in worker processes, one per slot at a time, each taking the next run
    of the queue when its last one ends. The queue starts with the longest runs (by
    `relative_cost`), so that no long run starts last while the other slots stand idle."""
    longest_first = sorted(todo, key=lambda item: -relative_cost(item[0].preset, item[1]))
    queue = list(enumerate(longest_first, 1))
    lock = threading.Lock()

    def next_item():
        with lock:
            return queue.pop(0) if queue else None

    def work(slot: int) -> None:
        while (item := next_item()) is not None:
            i, (run, ovr) = item
            _announce(i, len(todo), run, start)
            code = (
                "from pathlib import Path; from mlic.reproduce import train_one; "
                f"train_one({run.name!r}, {run.preset!r}, {ovr!r}, Path({str(results)!r}))"
            )
            env = {**os.environ, **slots[slot]}
            proc = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True
            )
            if proc.returncode:
                with lock:
                    queue.clear()  # the other workers finish their runs and take no new one
                last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise MlicError(f"run {run.name} failed in worker {slot}: {last}")
            _finished(run, results, start)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        for future in [pool.submit(work, slot) for slot in range(len(slots))]:
            future.result()


def relative_cost(preset: str, overrides: Sequence[str]) -> float:
    """A run's training work up to a constant: epochs x pixels per image, of the configuration
    it is trained with (the plan's overrides and the user's --set included)."""
    cfg = load_config(preset, list(overrides))
    return cfg.train.epochs * cfg.data.image_size**2


def _finished(run: PlannedRun, results: Path, start: float) -> None:
    metrics = read_metrics(results / "runs" / run.name) or {}
    best = metrics.get("map")
    result = f"mAP {best:.2f}" if isinstance(best, (int, float)) else "no metrics"
    _say(f"[done] {run.name}: {result} ({time.perf_counter() - start:.0f} s elapsed)")


def _say(line: str) -> None:
    """One whole line (workers' threads print too: print() may split text from newline)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def build_outputs(results: Path, family: str) -> None:
    """Tables, figures and the walkthrough via their notebooks (executed copies kept in
    results/executed/)."""
    for name in REPORT_NOTEBOOKS:
        execute_notebook(
            NOTEBOOKS / name,
            results / "executed" / name,
            {
                "results": notebook_path(results),
                "family": family,
                "out_dir": notebook_path(results),
            },
            label=f"report {name}",
        )
    # The walkthrough with the trained model of the plan (its best checkpoint, when on disk).
    execute_notebook(
        NOTEBOOKS / "walkthrough.ipynb",
        results / "executed" / "walkthrough.ipynb",
        {
            "run_dir": notebook_path(results / "runs" / "coco448-resnest-dual"),
            "out_dir": notebook_path(results),  # its figures and attention share, for docs/
        },
        label="walkthrough",
    )
    if family == "embedded" and results == (REPO_ROOT / "results").resolve():
        from mlic.report import RESULTS_PAGE, update_readme

        update_readme(REPO_ROOT / RESULTS_PAGE, results)  # the page shows what results/ holds
