"""GPU checks (marker ``gpu``; skipped without CUDA, see tests/conftest.py). None of them has run yet: no GPU
was lent to this project's sessions. ``python -m bench.gpu`` runs them with the GPU figures.

Each runs the real config path on the GPU present: device-side in-memory augmentation, bf16 and fp16
autocast, channels_last, torch.compile, DDP over NCCL, determinism, float16 extraction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from data.in_memory import augment_batch
from nets.build import build_net
from tests.conftest import run_script
from tests.test_extract import DIGIT_STATS, write_digits
from trainer.run import train

pytestmark = pytest.mark.gpu
GPU = ["trainer=gpu", "trainer.benchmark=false"]


def results(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())


def test_in_memory_augmentation_on_the_gpu_equals_the_cpu(make_cfg):
    cfg = make_cfg("augment=cifar", "data.in_memory=true", "data.batch_size=32")
    held = instantiate(
        cfg.data, train_transform=instantiate(cfg.augment.train), eval_transform=instantiate(cfg.augment.eval)
    )
    held.setup()
    batch = next(iter(held.val_dataloader()))
    on_gpu = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    gpu = augment_batch(on_gpu, held.batch_transforms, train=False)["input"]
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), augment_batch(batch, held.batch_transforms, train=False)["input"])
    train_batch = augment_batch(on_gpu, held.batch_transforms, train=True)["input"]
    assert train_batch.device.type == "cuda" and train_batch.shape == (32, 3, 32, 32)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_training_on_the_gpu(make_cfg, precision):
    cfg = make_cfg(*GPU, f"trainer.precision={precision}", "data.in_memory=true", "augment=cifar")
    train(cfg)
    res = results(cfg)
    assert res["global_step"] == 4 and np.isfinite(res["test/loss"]) and 0.0 <= res["test/acc"] <= 1.0


def test_channels_last_gives_the_same_logits_on_the_gpu(make_cfg):
    cfg = make_cfg("model=resnet", "model.channels_last=true")
    torch.manual_seed(0)
    fast = build_net(cfg.model).cuda().eval()
    plain = build_net(OmegaConf.merge(cfg.model, {"channels_last": False})).cuda().eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-3, rtol=1e-3)
    train(make_cfg(*GPU, "model=resnet", "model.channels_last=true", output_dir=Path(cfg.paths.output_dir) / "t"))


def test_compiled_net_trains_on_the_gpu(make_cfg):
    cfg = make_cfg(*GPU, "compile=true")
    train(cfg)
    assert results(cfg)["global_step"] == 4


def test_ddp_over_nccl_on_every_gpu_present(tmp_path):
    devices = torch.cuda.device_count()
    run_script(
        "train.py",
        "trainer=ddp",
        f"trainer.devices={devices}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "~callbacks.progress_bar",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=900,
    )
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["global_step"] == 4 and "test/acc" in res


def test_deterministic_gpu_runs_are_identical(make_cfg, tmp_path):
    exact = [*GPU, "trainer.deterministic=true", "seed=3", "trainer.max_epochs=2"]
    a, b = make_cfg(*exact, output_dir=tmp_path / "a"), make_cfg(*exact, output_dir=tmp_path / "b")
    train(a)
    train(b)
    assert results(a)["test/acc"] == results(b)["test/acc"]
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_float16_extraction_on_the_gpu_matches_float32(make_cfg, tmp_path):
    from features.extract import extract

    write_digits(tmp_path / "in", np.arange(40))
    outs = {}
    for precision in ("auto", "32"):  # auto: float16 autocast on a GPU
        cfg = make_cfg(
            "model=lenet",
            f"input={tmp_path / 'in'}",
            f"output={tmp_path / precision}",
            "num_workers=0",
            "progress=false",
            "device=cuda",
            f"precision={precision}",
            *DIGIT_STATS,
            config_name="extract",
            output_dir=tmp_path / f"hydra_{precision}",
        )
        torch.manual_seed(0)
        extract(cfg)
        outs[precision] = np.load(tmp_path / precision / "features.npy")
    assert outs["auto"].dtype == np.float32 and outs["auto"].shape == outs["32"].shape == (40, 84)
    cos = (outs["auto"] * outs["32"]).sum(1) / np.linalg.norm(outs["auto"], axis=1) / np.linalg.norm(outs["32"], axis=1)
    assert cos.min() > 0.999 and not np.array_equal(outs["auto"], outs["32"])  # float16 ran, and is close
