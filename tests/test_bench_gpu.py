"""bench.gpu's CPU side: the plan of steps, the data it copies, the figures it reads from each step's output.
No GPU ran it (none was lent to this project's sessions)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import pytest

from bench.gpu import ROOT, airbench_figures, main, prepare, pytest_counts


def test_dry_run_lists_every_step_with_its_command_and_runs_nothing(tmp_path, capsys):
    (tmp_path / "data" / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    out = tmp_path / "out" / "bench_gpu.json"
    steps = main(
        ["--dry-run", "--experiment", "arid6_r2plus1d", "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    )
    assert [s.name for s in steps] == ["tests", "airbench", "resnet18", "video"]
    by_name = {s.name: s for s in steps}
    assert by_name["tests"].command[-3:] == ["-p", "no:cacheprovider", "tests/test_gpu.py"]
    assert "--device" in by_name["airbench"].command and by_name["airbench"].skipped is None
    resnet = by_name["resnet18"].command
    assert resnet[1:4] == ["train.py", "experiment=cifar10_resnet18", "trainer=gpu"]
    assert f"paths.data_dir={(tmp_path / 'data').resolve()}" in resnet
    video = by_name["video"]
    assert "experiment=arid6_r2plus1d" in video.command
    if not (ROOT / "conf" / "experiment" / "arid6_r2plus1d.yaml").is_file():
        assert video.skipped == "no experiment config conf/experiment/arid6_r2plus1d.yaml"
    else:  # the recipe exists: then its clips must be prepared
        assert video.skipped.startswith("missing ") and video.skipped.endswith("arid6 (python -m bench.gpu --prepare)")
    written = json.loads(out.read_text())
    assert written["dry_run"] is True and all(s["returncode"] is None for s in written["steps"])
    printed = capsys.readouterr().out
    assert "[resnet18] would run" in printed and "[video] skipped: " in printed


def test_without_a_gpu_it_says_so_unless_dry_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--out", str(tmp_path / "x.json"), "--shared", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1 and "no CUDA device" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_prepare_unpacks_the_arid6_clips_once_into_the_ignored_folder(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    with tarfile.open(shared / "arid6-train.tar", "w") as tar:
        for name, data in (("arid6/classInd.txt", b"0 Jump\n"), ("arid6/train/Jump/Jump_1_1.mp4", b"\0" * 64)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = tmp_path / "data"
    assert prepare(shared, data, what=("arid6",)) == ["arid6"]
    assert (data / "arid6" / "classInd.txt").read_text() == "0 Jump\n"
    assert prepare(shared, data, what=("arid6",)) == []  # already there
    with pytest.raises(SystemExit, match="no cifar10_dev.py"):
        prepare(shared, data, what=("cifar10",))
    ignored = subprocess.run(["git", "check-ignore", "-q", ".gpu_data/x"], cwd=ROOT)
    assert ignored.returncode == 0  # the default --data-dir is git-ignored


def test_figures_are_read_from_the_steps_output():
    assert pytest_counts("....s\n7 passed, 1 skipped, 3 warnings in 41.20s\n") == {
        "passed": 7,
        "skipped": 1,
        "warnings": 3,
    }
    line = "acc_ours=0.9401 acc_ref=0.9398 time_ratio=1.120"  # bench.airbench's last line
    assert airbench_figures(f"table...\n{line}\n") == {"acc_ours": 0.9401, "acc_ref": 0.9398, "time_ratio": 1.12}
