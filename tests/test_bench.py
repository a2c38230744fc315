"""Every bench script runs and prints the figure the README quotes, at the smallest settings.

The figures themselves are only meaningful at the scripts' defaults (docs/performance.md); these runs keep
the commands working. They run in this process (the imports are paid once), as ``python -m bench.<name>``.
"""

from __future__ import annotations

import logging
import re
import runpy
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra

from tests.data_utils import write_cifar10
from tests.video_utils import make_video_folder

NUMBER = r"\d[\d,]*(?:\.\d+)?"


def run_bench(name: str, args: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [f"bench/{name}.py", *args])
    # The benches quieten these loggers for their own output; later tests of this process read their lines.
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning_fabric", "lightning", "trainer", "runs")]
    levels = [logger.level for logger in loggers]
    try:
        runpy.run_module(f"bench.{name}", run_name="__main__")
    finally:
        GlobalHydra.instance().clear()
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return capsys.readouterr().out


def test_overhead_prints_three_sides_and_the_ratio(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # train() writes nothing outside its run dir; this makes sure of it
    out = run_bench("overhead", ["--epochs", "1", "--repeats", "1", "--batch-size", "256"], monkeypatch, capsys)
    # digits: 1257 training images (70 %) in full batches of 256, one epoch, the same on every side.
    assert "1 epochs = 4 optimizer steps" in out
    for side in ("ours", "lightning", "hand"):
        assert re.search(rf"^\|\s+{side} \|( +{NUMBER} \|){{5}}$", out, re.M), side
    assert re.search(rf"^ours/hand per repeat \[{NUMBER}\], median {NUMBER}$", out, re.M)
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"ratio=\d+\.\d{3}", last) and float(last.split("=")[1]) > 0
    assert list(tmp_path.iterdir()) == []


def test_speed_prints_images_per_second_per_variant(monkeypatch, capsys):
    args = ["--workloads", "lenet", "--variants", "default", "channels_last", "--steps", "1", "--repeats", "1"]
    out = run_bench("speed", [*args, "--batch-size", "8"], monkeypatch, capsys)
    assert re.search(rf"\|\s+lenet \|\s+default \|\s+{NUMBER} images/s\s*\|.*\|\s+1.00x \|", out)
    assert re.search(rf"\|\s+lenet \| channels_last \|\s+{NUMBER} images/s\s*\|.*\|\s+{NUMBER}x \|", out)


def test_loading_compares_the_per_sample_and_in_memory_paths(monkeypatch, capsys):
    out = run_bench("loading", ["--batches", "2", "--repeats", "1", "--workers", "0"], monkeypatch, capsys)
    for source in ("digits", "cifar10-sized"):
        assert re.search(rf"{source} \| per-sample albumentations, 0 workers \|\s+{NUMBER} \|.*\|\s+1.0x \|", out)
        assert re.search(rf"{source} \|\s+in-memory, batch augment on device \|\s+{NUMBER} \|", out)


def test_scaling_prints_one_row_per_setting(monkeypatch, capsys):
    args = ["--batch-sizes", "4", "8", "--sizes", "16", "--frames", "2", "--clip-batch", "2", "--steps", "1"]
    out = run_bench("scaling", [*args, "--repeats", "1"], monkeypatch, capsys)
    for shape in ("4x3x32x32", "8x3x32x32", "128x3x16x16", "2x3x2x32x32"):
        assert re.search(rf"\|\s+{shape} \|\s+{NUMBER} \|", out), shape


def test_augment_compares_the_pipelines_and_the_loader(monkeypatch, capsys):
    args = ["--images", "4", "--steps", "2", "--workers", "0", "--repeats", "1", "--batch-size", "8"]
    out = run_bench("augment", args, monkeypatch, capsys)
    for preset in ("cifar", "cifar_strong", "imagenet"):
        assert re.search(rf"\|\s+{preset} \|\s+\d+ -> \d+ \|\s+{NUMBER} \|\s+{NUMBER} \|", out), preset
    assert re.search(rf"^\|\s+0 \|\s+{NUMBER} \|\s+{NUMBER} \|", out, re.M)


def test_video_decode_compares_seeking_with_decoding_everything(monkeypatch, capsys):
    out = run_bench("video_decode", ["--seconds", "1", "--clips", "2", "--gop", "30"], monkeypatch, capsys)
    assert re.search(rf"^\s+30\s+{NUMBER}/s\s+{NUMBER}/s\s+{NUMBER}/s\s+{NUMBER}x$", out, re.M)


VIDEO_ARGS = ["--frames", "2", "--crop", "16", "--short-side", "16", "--batch-size", "2", "--epochs", "1"]


def test_loading_video_compares_our_loader_and_decoding_with_plain_pyav_and_ffmpeg(monkeypatch, capsys, tmp_path):
    root = make_video_folder(tmp_path / "videos", {"a": 4, "b": 4}, num_frames=12, audio=True)  # mp4: H.264 + AAC
    args = ["--video", str(root), *VIDEO_ARGS, "--repeats", "1", "--workers", "0"]
    out = run_bench("loading", args, monkeypatch, capsys)
    for side in ("per-clip, 0 workers", "cached, 0 workers", "plain"):
        assert re.search(rf"^\|\s+{side} \|( +{NUMBER} \|){{6}}$", out, re.M), side
    for key in ("per_clip_w0_vs_plain", "cached_w0_vs_plain", "cpu_cached_w0_vs_plain"):
        assert re.search(rf"^{key}={NUMBER}$", out, re.M), key
    assert re.search(r"^goal \(wall\): a cached epoch <= 1.2x the plain loop's: cached, 0 workers [\d.]+x", out, re.M)
    # 8 videos of 12 frames: every side decodes all 96, FFmpeg too (a differing count would print a note).
    for side in ("ours, every frame", "ffmpeg, scale \\+ rgb24", "ffmpeg, decode only"):
        assert re.search(rf"^\|\s+{side} \|\s+96 \|( +{NUMBER} \|){{7}}$", out, re.M), side
    assert re.search(rf"^\|\s+ours, one clip \|\s+\d+ \|( +{NUMBER} \|){{7}}$", out, re.M)
    assert "note: ours decoded" not in out
    for key in ("read_all_vs_ffmpeg", "cpu_read_all_vs_ffmpeg", "read_all_vs_ffmpeg_decode_only"):
        assert re.search(rf"^{key}={NUMBER}$", out, re.M), key


def test_loading_video_skips_ffmpeg_with_a_message_when_there_is_none(monkeypatch, capsys, tmp_path):
    root = make_video_folder(tmp_path / "videos", {"a": 1, "b": 1}, num_frames=6)
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as when not installed
    args = ["--video", str(root), *VIDEO_ARGS, "--repeats", "1", "--skip-train"]
    out = run_bench("loading", args, monkeypatch, capsys)
    assert "2. ffmpeg: skipped: no ffmpeg on PATH and no imageio-ffmpeg package (pip install imageio-ffmpeg)" in out
    assert re.search(r"^\|\s+ours, every frame \|\s+12 \|", out, re.M)
    assert "ffmpeg, decode only" not in out and "read_all_vs_ffmpeg" not in out


@pytest.mark.slow
def test_nonlocal_compares_the_two_implementations(monkeypatch, capsys):
    out = run_bench("nonlocal", ["--sizes", "4", "8", "--repeat", "1", "--channels", "8"], monkeypatch, capsys)
    for impl in ("block", "reference"):
        assert re.search(rf"growth exponent \(\s*{impl}\): time ~ N\^-?{NUMBER}, memory ~ N\^-?{NUMBER}", out), impl


@pytest.mark.slow
def test_transfer_digits_prints_both_accuracies(monkeypatch, capsys, tmp_path):
    args = ["--seeds", "1", "--pretrain-epochs", "1", "--epochs", "1", "--out", str(tmp_path)]
    out = run_bench("transfer", args, monkeypatch, capsys)
    assert re.fullmatch(r"finetune_acc=0\.\d{4} scratch_acc=0\.\d{4}", out.strip().splitlines()[-1])


@pytest.mark.slow
def test_transfer_cifar10_runs_the_airbench_recipe(monkeypatch, capsys, tmp_path):
    write_cifar10(tmp_path / "data", n_per_batch=60, n_test=40)
    args = ["--data", "cifar10", "--data-root", str(tmp_path / "data"), "--seeds", "1", "--per-class", "2"]
    args += ["--widths", "4,8,8", "--steps", "2", "--modes", "none", "--out", str(tmp_path / "runs")]
    out = run_bench("transfer", [*args, "train_epochs=0.2", "callbacks.whitening.num_images=50"], monkeypatch, capsys)
    assert re.fullmatch(r"finetune_acc=[01]\.\d{4} scratch_acc=[01]\.\d{4}", out.strip().splitlines()[-1])


def test_airbench_side_by_side_prints_the_ratio_line(monkeypatch, capsys, tmp_path):
    write_cifar10(tmp_path / "data", n_per_batch=220, n_test=40)  # 1,100 images: one batch of 1024 a side
    args = ["--data-root", str(tmp_path / "data"), "--widths", "4,8,8", "--epochs", "1", "--seeds", "1"]
    args += ["--out", str(tmp_path / "runs"), "callbacks.whitening.num_images=50"]
    out = run_bench("airbench", args, monkeypatch, capsys)
    assert re.fullmatch(
        rf"acc_ours=[01]\.\d{{4}} acc_ref=[01]\.\d{{4}} time_ratio={NUMBER}", out.strip().splitlines()[-1]
    )


def test_video_models_prints_one_row_per_model(monkeypatch, capsys):
    args = ["--models", "x3d", "--frames", "4", "--size", "32", "--batch-size", "2", "--steps", "1", "--repeats", "1"]
    out = run_bench("video_models", args, monkeypatch, capsys)
    assert re.search(rf"^\|\s+x3d \|( +{NUMBER} \|){{6}}$", out, re.M)
    assert "clips 2 x 3 x 4 x 32 x 32" in out


def test_arid_probe_prints_the_three_descriptors(monkeypatch, capsys, tmp_path):
    from tests.test_experiments import write_arid6

    write_arid6(tmp_path)  # 12 generated clips a split in ARID-6's layout
    out = run_bench("arid_probe", ["--arid-root", str(tmp_path)], monkeypatch, capsys)
    for name in ("appearance", "motion map", "motion statistics"):
        assert len(re.findall(rf"^\|\s+{name} \|", out, re.M)) == 3  # one row per regularisation strength
    assert "training scenes per class: Jump 1, Run 1" in out
    with pytest.raises(SystemExit):
        run_bench("arid_probe", ["--arid-root", str(tmp_path / "nowhere")], monkeypatch, capsys)


def test_recipes_skip_the_arid_rows_without_the_clips_and_name_the_command(monkeypatch, capsys, tmp_path):
    from bench.recipes import FULL

    out = run_bench("recipes", ["--only", "ARID"], monkeypatch, capsys)
    assert out.count("skipped: no --arid-root") == sum(r.arid for r in FULL) >= 3
    pretrain = "python train.py experiment=cifar10_lenet data.root=CIFAR hydra.run.dir=PRE && "
    assert pretrain + "python train.py -m experiment=arid6_cnn_gru" in out
    assert "python train.py -m experiment=arid6_c3d data.root=DIR/arid6/train seed=0,1,2" in out
    with pytest.raises(SystemExit):
        run_bench("recipes", ["--only", "ARID", "--arid-root", str(tmp_path)], monkeypatch, capsys)
    assert "no arid6/train and dev_train.txt" in capsys.readouterr().err


def test_a_transfer_recipe_pretrains_once_and_starts_every_seed_from_it(tmp_path):
    from argparse import Namespace

    import torch

    from bench.recipes import Recipe, run
    from tests.test_experiments import SHRINK_VIDEO, write_arid6

    write_cifar10(tmp_path / "cifar10", n_per_batch=8, n_test=8)
    write_arid6(tmp_path / "clips")
    step = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.num_workers=0"]
    recipe = Recipe(
        "transfer",
        ("experiment=arid6_cnn_gru", *SHRINK_VIDEO, "data.short_side=20", *step),
        (0, 1),
        0.0,
        0.0,
        arid=True,
        pretrain=("experiment=cifar10_lenet", "data.val_size=8", "data.batch_size=4", *step),
    )
    assert recipe.command().startswith(
        "python train.py experiment=cifar10_lenet data.val_size=8 data.batch_size=4 trainer.max_epochs=1 "
    )
    assert "model.pretrained=PRE/checkpoints/best.ckpt model.pretrained_exclude=[head] seed=0,1" in recipe.command()
    args = Namespace(cifar_root=tmp_path / "cifar10", arid_root=tmp_path / "clips" / "arid6")
    out = tmp_path / "runs"
    results = [run(recipe, seed, args, out / f"3_seed{seed}") for seed in (0, 1)]
    assert sorted(p.name for p in out.iterdir()) == ["3_pretrain", "3_seed0", "3_seed1"]
    pre = torch.load(out / "3_pretrain" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    conv = pre["state_dict"]["net.backbone.conv1.0.weight"]
    for result, seed in zip(results, (0, 1), strict=True):
        assert f"model.pretrained={out / '3_pretrain' / 'checkpoints' / 'best.ckpt'}" in result["overrides"]
        assert result["seed"] == seed and 0.0 <= result["test/acc"] <= 1.0
    assert conv.shape == (6, 3, 5, 5)
