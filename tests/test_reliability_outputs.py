"""Outputs never written over (issue 25): eval.py into a training run's dir, export.py over a checkpoint, two
extractions into one dir, a refused run's leftovers. Each on a real training run's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from features.extract import extract
from runs.compose import compose_config
from runs.lock import RunDirHoldsARun, RunDirInUse
from runs.nonfinite import NonFiniteError
from tests.conftest import SMALL, run_script
from tests.test_reliability_runs import hold_lock
from trainer.export import export
from trainer.run import evaluate, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run dir of a real (small) LeNet run on digits."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(compose_config(*SMALL, "test=false", output_dir=run_dir))
    return run_dir


def files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_eval_into_a_training_runs_dir_is_refused_and_changes_nothing(make_cfg, trained):
    before = files(trained)
    assert "results.json" in before and "epochs" in json.loads(before["results.json"])
    cfg = make_cfg(f"ckpt_path={trained / 'checkpoints' / 'best.ckpt'}", config_name="eval", output_dir=trained)
    with pytest.raises(RunDirHoldsARun, match=rf"run dir {trained} holds another run \(results\.json, checkpoints\)"):
        evaluate(cfg)
    assert files(trained) == before


def test_eval_into_a_dir_a_training_run_is_using_fails_at_once(make_cfg, trained, tmp_path):
    run_dir = tmp_path / "busy"
    holder = hold_lock(run_dir)
    try:
        cfg = make_cfg(f"ckpt_path={trained / 'checkpoints' / 'best.ckpt'}", config_name="eval", output_dir=run_dir)
        with pytest.raises(RunDirInUse, match=f"process {holder.pid}"):
            evaluate(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert not (run_dir / "results.json").exists()


def test_eval_in_a_dir_of_its_own_still_writes_its_results(make_cfg, trained, tmp_path):
    cfg = make_cfg(f"ckpt_path={trained / 'checkpoints' / 'best.ckpt'}", config_name="eval")
    results = evaluate(cfg)
    assert "test/acc" in results and (tmp_path / "run" / "results.json").is_file()


def export_cfg(tmp_path: Path, ckpt: Path, *overrides: str):
    return compose_config(f"ckpt_path={ckpt}", *overrides, output_dir=tmp_path / "export", config_name="export")


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_export_over_the_checkpoint_itself_is_refused(trained, tmp_path, how):
    ckpt = trained / "checkpoints" / "best.ckpt"
    before = ckpt.read_bytes()
    output = {"same": ckpt, "symlink": tmp_path / "net.onnx", "hardlink": tmp_path / "net.onnx"}[how]
    if how == "symlink":
        output.symlink_to(ckpt)
    elif how == "hardlink":
        output.hardlink_to(ckpt)
    for overwrite in ("false", "true"):
        with pytest.raises(FileExistsError, match=rf"output={output} is the checkpoint being exported"):
            export(export_cfg(tmp_path, ckpt, f"output={output}", f"overwrite={overwrite}"))
    assert ckpt.read_bytes() == before


def test_export_over_another_checkpoint_needs_overwrite(trained, tmp_path):
    ckpt = trained / "checkpoints" / "best.ckpt"
    other = tmp_path / "other.ckpt"
    other.write_bytes(ckpt.read_bytes())
    with pytest.raises(FileExistsError, match=rf"output={other} is a checkpoint; .* or overwrite=true"):
        export(export_cfg(tmp_path, ckpt, f"output={other}", "format=torchscript"))
    assert other.read_bytes() == ckpt.read_bytes()
    export(export_cfg(tmp_path, ckpt, f"output={other}", "format=torchscript", "overwrite=true"))
    assert other.read_bytes() != ckpt.read_bytes()
    # A TorchScript file is no checkpoint: exporting again replaces it as before.
    export(export_cfg(tmp_path, ckpt, f"output={other}", "format=torchscript"))


# --- non-finite weights ------------------------------------------------------------------------------------


@pytest.fixture
def nan_checkpoint(trained, tmp_path) -> Path:
    """The trained run's checkpoint with one weight tensor turned NaN (as a diverged run elsewhere leaves it)."""
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["state_dict"]["net.head.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.ckpt"
    torch.save(ckpt, path)
    return path


NAN_MESSAGE = r"nan\.ckpt holds non-finite weights \(NaN or inf\) in head\.weight"


def test_eval_refuses_nonfinite_weights(make_cfg, nan_checkpoint):
    with pytest.raises(NonFiniteError, match=NAN_MESSAGE):
        evaluate(make_cfg(f"ckpt_path={nan_checkpoint}", config_name="eval"))


def test_export_refuses_nonfinite_weights(nan_checkpoint, tmp_path):
    with pytest.raises(NonFiniteError, match=NAN_MESSAGE):
        export(export_cfg(tmp_path, nan_checkpoint))
    assert not nan_checkpoint.with_suffix(".onnx").exists()


def test_extract_refuses_nonfinite_weights(make_cfg, nan_checkpoint, tmp_path):
    Image.new("RGB", (32, 32), (120, 30, 200)).save(tmp_path / "a.png")
    cfg = make_cfg(
        f"ckpt_path={nan_checkpoint}",
        f"input={tmp_path / 'a.png'}",
        f"output={tmp_path / 'features'}",
        "num_workers=0",
        "progress=false",
        config_name="extract",
        output_dir=tmp_path / "hydra",
    )
    with pytest.raises(NonFiniteError, match=NAN_MESSAGE):
        extract(cfg)
    assert not (tmp_path / "features" / "features.npy").exists()


# --- two extractions into one output ----------------------------------------------------------------------


def extract_cfg(make_cfg, tmp_path: Path, ckpt: Path, *overrides: str):
    return make_cfg(
        f"ckpt_path={ckpt}",
        f"input={tmp_path / 'images'}",
        f"output={tmp_path / 'features'}",
        "num_workers=0",
        "progress=false",
        *overrides,
        config_name="extract",
        output_dir=tmp_path / "hydra",
    )


def write_images(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (32, 32), (40 * i, 30, 200)).save(folder / f"{i}.png")


@pytest.mark.parametrize("shard", [None, "1/2"])
def test_a_second_extraction_into_an_output_in_use_fails_at_once_naming_the_first(make_cfg, trained, tmp_path, shard):
    write_images(tmp_path / "images")
    out = tmp_path / "features"
    holder = hold_lock(out if shard is None else out / ".locks" / "1-of-2")  # a real process writing that shard
    try:
        overrides = [f"shard={shard}"] if shard else []
        cfg = extract_cfg(make_cfg, tmp_path, trained / "checkpoints" / "best.ckpt", *overrides)
        with pytest.raises(RunDirInUse, match=rf"output {out}\S* is in use by process {holder.pid} .*output=<new dir>"):
            extract(cfg)
        if shard:  # another shard of the same output is not in the way
            extract(extract_cfg(make_cfg, tmp_path, trained / "checkpoints" / "best.ckpt", "shard=0/2"))
    finally:
        holder.kill()
        holder.wait()
    meta = extract(extract_cfg(make_cfg, tmp_path, trained / "checkpoints" / "best.ckpt", *overrides))
    assert meta["rows"] == (3 if shard is None else meta["rows"]) and not (out / ".lock").exists()


# --- a refused run leaves nothing -----------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_a_run_refused_in_a_busy_dir_leaves_nothing_there(trained, tmp_path, script):
    """A real second process given a dir a run is using (which has its .hydra/ and train.log): it fails naming
    the first, and the Hydra config copy it wrote there (.hydra-resume-1/) is gone."""
    run_dir = tmp_path / "busy"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("the running run's config\n")
    (run_dir / "train.log").write_text("")
    holder = hold_lock(run_dir)
    try:
        before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.name != ".lock")
        extra = [f"ckpt_path={trained / 'checkpoints' / 'best.ckpt'}"] if script == "eval.py" else []
        proc = run_script(script, *extra, f"hydra.run.dir={run_dir}", check=False)
        assert proc.returncode != 0 and f"is in use by process {holder.pid}" in proc.stdout + proc.stderr
        after = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.name != ".lock")
        assert after == before and not (run_dir / ".hydra-resume-1").exists()
    finally:
        holder.kill()
        holder.wait()
