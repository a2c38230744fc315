"""Correctness of the speed options: in-memory whole-batch augmentation, channels_last, bf16-mixed, compile.

Speed itself is measured by bench/*.py, never here.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from data.in_memory import BatchAugment, InMemoryDataset, augment_batch, batch_augment_from, hold_in_memory
from data.transforms import Pipeline
from nets.build import build_net

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.3, 0.4]
NUMBER = r"\d+(?:\.\d+)?(?:e-?\d+)?"


def images(n: int = 6, size: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)  # (N, H, W, C)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) uint8


@pytest.mark.parametrize(
    "pad",
    [
        A.Pad(padding=3, border_mode=4),
        A.PadIfNeeded(min_height=18, min_width=16, border_mode=4),
        A.Pad(padding=2, border_mode=0, fill=7),
    ],
)
def test_batch_pad_and_normalise_equal_the_per_sample_pipeline(pad):
    x = images()
    pipeline = Pipeline(transforms={"pad": pad}, mean=MEAN, std=STD)
    expected = torch.stack([pipeline(i) for i in x])
    got = batch_augment_from(pipeline, image_size=(12, 12))(nchw(x))
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_batch_crop_flip_gives_crops_of_the_padded_image_with_both_flips():
    x = images(n=64)
    pipeline = Pipeline(
        transforms={
            "pad": A.Pad(padding=2, border_mode=4),
            "crop": A.RandomCrop(12, 12),
            "flip": A.HorizontalFlip(p=0.5),
        },
        mean=MEAN,
        std=STD,
    )
    augment = batch_augment_from(pipeline, image_size=(12, 12))
    padded = BatchAugment(mean=MEAN, std=STD, pad=(2, 2, 2, 2))(nchw(x))  # (N, 3, 16, 16), no randomness
    out = augment(nchw(x), generator=torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 12, 12) and out.dtype == torch.float32
    found = set()
    for i in range(len(x)):
        matches = {
            (top, left, flip)
            for top in range(5)
            for left in range(5)
            for flip in (False, True)
            if torch.equal(
                out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, top : top + 12, left : left + 12])
            )
        }
        assert matches, f"sample {i} is no (flipped) crop of its padded image"
        found |= matches
    assert {f for _, _, f in found} == {False, True}
    assert len({(top, left) for top, left, _ in found}) > 10  # offsets drawn per sample, not one per batch


def test_untranslatable_transform_fails_with_true_and_falls_back_with_auto():
    pipeline = Pipeline(transforms={"blur": A.Blur(p=0.5)}, mean=MEAN, std=STD)
    eval_pipeline = Pipeline(mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="Blur.*data.in_memory=false"):
        batch_augment_from(pipeline, image_size=(12, 12))

    class Split:
        images, targets = images(), np.arange(6)

    splits = (Split(), Split(), Split())
    with pytest.raises(ValueError, match="Blur"):
        hold_in_memory(splits, mode=True, train_transform=pipeline, eval_transform=eval_pipeline)
    same, transforms = hold_in_memory(splits, mode="auto", train_transform=pipeline, eval_transform=eval_pipeline)
    assert same is splits and transforms is None
    held, transforms = hold_in_memory(splits, mode="auto", train_transform=eval_pipeline, eval_transform=eval_pipeline)
    assert all(isinstance(d, InMemoryDataset) for d in held) and set(transforms) == {"train", "eval"}


def test_in_memory_digits_batches_match_the_per_sample_path(make_cfg):
    cfg = make_cfg("augment=cifar", "data.in_memory=true", "data.batch_size=32")
    transforms = {
        "train_transform": instantiate(cfg.augment.train),
        "eval_transform": instantiate(cfg.augment.eval),
    }
    held = instantiate(cfg.data, **transforms)
    per_sample = instantiate(cfg.data, **{**transforms, "in_memory": False})
    held.setup()
    per_sample.setup()
    batch = next(iter(held.val_dataloader()))
    assert batch["input"].dtype == torch.uint8 and batch["input"].shape == (32, 3, 32, 32)
    assert batch["target"].dtype == torch.int64 and batch["num_skipped"] == 0
    expected = next(iter(per_sample.val_dataloader()))
    evaluated = augment_batch(batch, held.batch_transforms, train=False)
    torch.testing.assert_close(evaluated["input"], expected["input"], atol=1e-5, rtol=0)
    assert torch.equal(evaluated["target"], expected["target"])
    train = augment_batch(next(iter(held.train_dataloader())), held.batch_transforms, train=True)
    assert train["input"].dtype == torch.float32 and train["input"].shape == (32, 3, 32, 32)
    assert len(held.train_dataloader()) == len(per_sample.train_dataloader())


def test_channels_last_net_gives_the_same_logits(make_cfg):
    cfg = make_cfg("model=resnet", "model.channels_last=true")
    torch.manual_seed(0)
    fast = build_net(cfg.model)
    plain = build_net(OmegaConf.merge(cfg.model, {"channels_last": False}))
    plain.load_state_dict(fast.state_dict())
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16)
    fast.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-4, rtol=1e-4)
    assert fast(x).shape == (2, 10)


def test_compile_option_compiles_the_net_in_place(make_cfg):
    cfg = make_cfg()
    assert cfg.compile is False
    net = build_net(cfg.model, compile=True)
    assert net._compiled_call_impl is not None  # forward goes through torch.compile
    assert all("_orig_mod" not in k for k in net.state_dict())  # checkpoints keep the plain keys


def test_bf16_channels_last_in_memory_training_run(make_cfg):
    from trainer.run import train

    cfg = make_cfg("trainer.precision=bf16-mixed", "model.channels_last=true", "data.in_memory=true", "augment=cifar")
    train(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["global_step"] == 4 and 0.0 <= results["test/acc"] <= 1.0


@pytest.mark.slow
def test_compiled_net_trains_like_eager(make_cfg):
    cfg = make_cfg()
    torch.manual_seed(0)
    eager = build_net(cfg.model)
    compiled = build_net(cfg.model, compile=True)
    compiled.load_state_dict(eager.state_dict())
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for net in (eager, compiled):
        torch.nn.functional.cross_entropy(net(x), y).backward()
    torch.testing.assert_close(compiled(x), eager(x), atol=1e-4, rtol=1e-4)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_mixed_precision_follows_the_hardware(monkeypatch):
    from runs import resolvers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(resolvers, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert resolvers.mixed_precision("cpu") == resolvers.mixed_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(resolvers, "cpu_flags", lambda: {"avx2", "avx512f"})  # bf16 would be emulated: slower
    assert resolvers.mixed_precision("auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, precision in [((7, 0), "16-mixed"), ((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed")]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda c=capability: c)
        assert resolvers.mixed_precision("auto") == resolvers.mixed_precision("gpu") == precision
    assert resolvers.mixed_precision("cpu") == "32-true"
    with pytest.raises(ValueError, match="unknown accelerator 'tpu'"):
        resolvers.mixed_precision("tpu")


def test_cpu_flags_reads_this_machine():
    from runs.resolvers import cpu_flags

    flags = cpu_flags()
    if Path("/proc/cpuinfo").exists() and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert "avx2" in flags  # what torch detected, /proc/cpuinfo lists
    else:
        assert isinstance(flags, set)


def test_mixed_precision_from_the_command_line(make_cfg):
    from runs.resolvers import mixed_precision

    cfg = make_cfg("trainer.precision='${visfeat.mixed_precision:${trainer.accelerator}}'")
    assert cfg.trainer.precision == mixed_precision("cpu")


def test_simple_profiler_reports_the_time_of_each_hook(make_cfg, caplog):
    from trainer.run import train

    caplog.set_level(logging.INFO)
    train(make_cfg("trainer.profiler=simple", "test=false"))
    # One row per hook: mean seconds, calls (4 training batches: 4 optimizer steps), total seconds.
    row = rf"\|\s+{{}}\s+\|\s+{NUMBER}\s+\|\s+{{}}\s+\|\s+{NUMBER}\s+\|"
    assert re.search(
        row.format(re.escape("[LightningModule]ClassificationModule.on_before_optimizer_step"), 4), caplog.text
    )
    assert re.search(row.format(re.escape("[Callback]History.on_train_epoch_end"), 1), caplog.text)


def test_bf16_conv3d_probe_tells_what_a_video_resnet_layer_gets():
    """The probe's verdict matches a temporal convolution of R(2+1)D's layer3 over 2 frames under autocast, on
    whatever CPU runs this (on the AMD EPYC of docs/performance.md: both wrong)."""
    from trainer.checks import cpu_bf16_conv3d_grads_ok

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(64, 64, (3, 1, 1), padding=(1, 0, 0), bias=False)
    x, grad_out = torch.randn(4, 64, 2, 4, 4), torch.randn(4, 64, 2, 4, 4)
    conv(x).backward(grad_out)
    reference, conv.weight.grad = conv.weight.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    out.backward(grad_out.bfloat16())
    error = ((conv.weight.grad - reference).abs().max() / reference.abs().max()).item()
    assert cpu_bf16_conv3d_grads_ok() == (error < 0.05), error


def test_bf16_with_3d_convolutions_fails_before_training_where_the_cpu_gets_them_wrong(make_cfg, monkeypatch, tmp_path):
    from trainer import checks
    from trainer.run import build_trainer, train

    monkeypatch.setattr(checks, "cpu_bf16_conv3d_grads_ok", lambda: False)
    video = [f"paths.data_dir={tmp_path / 'data'}", "data=synthetic_video", "data.train_per_class=2"]
    video += ["data.val_per_class=1", "data.test_per_class=1"]
    cfg = make_cfg(*video, "model=r3d", "trainer.precision=bf16-mixed")
    with pytest.raises(
        checks.ConfigError, match=r"trainer.precision=bf16-mixed on this CPU.*trainer.precision=32-true"
    ):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
    # Nets without 3D convolutions, and fp32, are not affected.
    for overrides in (["model=cnn_lstm", "trainer.precision=bf16-mixed"], ["model=r3d", "trainer.precision=32-true"]):
        cfg = make_cfg(*video, *overrides)
        checks.check_precision(build_net(cfg.model), build_trainer(cfg))
