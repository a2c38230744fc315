"""The GPU check in one command: ``python -m bench.gpu [--experiment arid6_...] [--dry-run]``.

    python -m bench.gpu --prepare                       # here: copy ../shared/data into .gpu_data/ (git-ignored)
    python -m bench.gpu --dry-run --experiment NAME      # the steps and their commands, nothing run
    python -m bench.gpu --experiment NAME                # on the GPU machine: every step, figures to JSON

Steps, each a subprocess whose output goes to ``<out dir>/<step>.log``:

    tests      pytest -m gpu tests/test_gpu.py: in-memory augmentation on the device, bf16/fp16 autocast,
               channels_last, torch.compile, DDP over NCCL on every GPU present, determinism, fp16 extraction
    airbench   python -m bench.airbench --device cuda: airbench's own train94 against
               experiment=cifar10_airbench94 at the full budget (widths 64/256/256, 9.9 epochs), --seeds seeds
    resnet18   python train.py experiment=cifar10_resnet18 trainer=gpu: the recipe's 30 epochs
    video      python train.py experiment=<--experiment> trainer=gpu (e.g. an arid6_* recipe)

Data: ``--data-dir`` (default ``.gpu_data/``, git-ignored, so that it travels with the working tree to a bare GPU
machine) is prepared from ``--shared`` (default ``../shared/data``): ``cifar10_dev.py`` writes the dev split of
the CIFAR-10 training images (``cifar10/cifar-10-batches-py``), and ``arid6-train.tar`` is unpacked
(``arid6/``); the train.py steps get ``paths.data_dir=<data dir>``. A step whose data or experiment config is
missing is recorded as skipped, with why.

The JSON (``--out``, default ``outputs/bench_gpu/bench_gpu.json``) is rewritten after every step: the machine,
torch and CUDA versions, and per step its command, exit code, seconds and figures (tests passed/failed/skipped;
acc_ours, acc_ref, time_ratio; test/acc and train_seconds of each recipe).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from runs.atomic import atomic_open

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("tests", "airbench", "resnet18", "video")


@dataclass
class Step:
    name: str
    command: list[str]
    needs: list[str] = field(default_factory=list)  # paths that must exist first
    run_dir: str | None = None  # a train.py step's run dir (its results.json)
    skipped: str | None = None  # why it cannot run
    returncode: int | None = None
    seconds: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)


def plan(args: argparse.Namespace) -> list[Step]:
    data, out = args.data_dir.resolve(), args.out.parent.resolve()
    cifar = data / "cifar10"
    py = sys.executable
    quiet = ["~callbacks.progress_bar", "+trainer.enable_progress_bar=false", f"paths.data_dir={data}"]
    steps = [
        Step("tests", [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"]),
        Step(
            "airbench",
            [py, "-m", "bench.airbench", "--data-root", str(cifar), "--device", "cuda", "--seeds", str(args.seeds)],
            needs=[str(cifar / "cifar-10-batches-py")],
        ),
        Step(
            "resnet18",
            [py, "train.py", "experiment=cifar10_resnet18", "trainer=gpu", *quiet, f"hydra.run.dir={out / 'resnet18'}"],
            needs=[str(cifar / "cifar-10-batches-py")],
            run_dir=str(out / "resnet18"),
        ),
    ]
    if args.experiment:
        config = ROOT / "conf" / "experiment" / f"{args.experiment}.yaml"
        video = Step(
            "video",
            [py, "train.py", f"experiment={args.experiment}", "trainer=gpu", *quiet, f"hydra.run.dir={out / 'video'}"],
            needs=[str(data / "arid6")] if args.experiment.startswith("arid6") else [],
            run_dir=str(out / "video"),
        )
        if not config.is_file():
            video.skipped = f"no experiment config {config.relative_to(ROOT)}"
        steps.append(video)
    else:
        steps.append(Step("video", [], skipped="no --experiment given (e.g. --experiment arid6_r2plus1d)"))
    wanted = set(args.only.split(",")) if args.only else set(STEPS)
    for step in steps:
        missing = [p for p in step.needs if not Path(p).exists()]
        if step.name not in wanted:
            step.skipped = "not in --only"
        elif missing and step.skipped is None:
            step.skipped = f"missing {missing[0]} (python -m bench.gpu --prepare)"
    return steps


# --- data ----------------------------------------------------------------------------------------------------


def prepare(shared: Path, data_dir: Path, *, what: tuple[str, ...] = ("cifar10", "arid6")) -> list[str]:
    """Copies what the steps read from ``shared`` into ``data_dir`` (once: what is there is kept)."""
    done = []
    data_dir.mkdir(parents=True, exist_ok=True)
    if "cifar10" in what and not (data_dir / "cifar10" / "cifar-10-batches-py").is_dir():
        script = shared / "cifar10_dev.py"
        if not script.is_file():
            raise SystemExit(f"--shared {shared}: no cifar10_dev.py there (see ../shared/data/README.md)")
        subprocess.run([sys.executable, str(script), str(data_dir / "cifar10")], cwd=ROOT, check=True)
        done.append("cifar10")
    if "arid6" in what and not (data_dir / "arid6").is_dir():
        archive = shared / "arid6-train.tar"
        if not archive.is_file():
            raise SystemExit(f"--shared {shared}: no arid6-train.tar there (see ../shared/data/README.arid6.md)")
        with tarfile.open(archive) as tar:
            tar.extractall(data_dir, filter="data")  # plain files only: no links out, no devices
        done.append("arid6")
    return done


# --- figures -------------------------------------------------------------------------------------------------


def pytest_counts(text: str) -> dict[str, int]:
    """``"5 passed, 1 skipped, 2 warnings in 30.1s"`` -> ``{"passed": 5, "skipped": 1, "warnings": 2}``."""
    last = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", last[-1])} if last else {}


def airbench_figures(text: str) -> dict[str, float]:
    found = re.findall(r"acc_ours=([\d.]+) acc_ref=([\d.]+) time_ratio=([\d.]+)", text)
    return dict(zip(("acc_ours", "acc_ref", "time_ratio"), map(float, found[-1]), strict=True)) if found else {}


def run_figures(run_dir: str) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())
    return {k: results[k] for k in ("test/acc", "val/acc_best", "epochs", "train_seconds") if k in results}


def figures(step: Step, text: str) -> dict[str, Any]:
    if step.name == "tests":
        return pytest_counts(text)
    if step.name == "airbench":
        return airbench_figures(text)
    return run_figures(step.run_dir) if step.run_dir else {}


# --- running -------------------------------------------------------------------------------------------------


def write(out: Path, header: dict[str, Any], steps: list[Step]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as f:
        f.write(json.dumps({**header, "steps": [asdict(s) for s in steps]}, indent=1))


def machine_header(dry_run: bool) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "dry_run": dry_run,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv: list[str] | None = None) -> list[Step]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=None, help="the video recipe, e.g. arid6_r2plus1d")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".gpu_data", help="prepared data (git-ignored)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data", help="where data comes from")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_gpu" / "bench_gpu.json")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the airbench side by side")
    parser.add_argument("--only", default=None, help=f"comma-separated steps of {','.join(STEPS)}")
    parser.add_argument("--prepare", action="store_true", help="only copy the data into --data-dir")
    parser.add_argument("--dry-run", action="store_true", help="list the steps and their commands; run nothing")
    args = parser.parse_args(argv)

    if args.prepare:
        done = prepare(args.shared, args.data_dir)
        print(f"{args.data_dir}: prepared {done or 'nothing (all there)'}")
        return []
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench.gpu: torch sees no CUDA device here; run it on a GPU machine, or --dry-run")
    if not args.dry_run and args.shared.is_dir():
        prepare(args.shared, args.data_dir)
    steps = plan(args)
    header = machine_header(args.dry_run)
    for step in steps:
        status = f"skipped: {step.skipped}" if step.skipped else ("would run" if args.dry_run else "running")
        print(f"[{step.name}] {status}\n    {' '.join(step.command)}", flush=True)
        if step.skipped or args.dry_run:
            continue
        log = args.out.parent / f"{step.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log, "w") as f:
            step.returncode = subprocess.run(step.command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
        step.seconds = round(time.perf_counter() - start, 1)
        step.figures = figures(step, log.read_text(errors="replace"))
        print(f"    exit {step.returncode} in {step.seconds} s: {step.figures}", flush=True)
        write(args.out, header, steps)
    write(args.out, header, steps)
    print(f"-> {args.out}")
    return steps


if __name__ == "__main__":
    main()
