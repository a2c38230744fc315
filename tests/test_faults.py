"""Each fault injected for real: a signal mid-epoch then a resume, a crash while writing a checkpoint, a NaN
loss, non-finite weights, a truncated JPEG, a checkpoint whose config names code outside the allowlist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nets.stored import UnsafeConfigError, load_checkpoint, stored_config
from runs.checkpoint_io import AtomicCheckpointIO
from runs.nonfinite import NonFiniteError, all_finite, check_update
from trainer.run import train

# 2 epochs of 3 batches; results must not depend on anything but the seed.
EXACT = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.deterministic=true",
    "seed=7",
    "data.batch_size=32",
]
METRICS = (
    "val/acc",
    "val/acc_best",
    "val/loss",
    "test/acc",
    "test/loss",
    "epochs",
    "global_step",
    "data/skipped",
    "train/skipped_nonfinite",
)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("signum", ["SIGTERM", pytest.param("SIGUSR1", marks=pytest.mark.slow)])
def test_signal_mid_epoch_then_resume_equals_uninterrupted_run(make_cfg, tmp_path, signum):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    train(make_cfg(*EXACT, output_dir=ref))

    # Step 4 is the second batch of epoch 1: the checkpoint is written mid-epoch.
    fault = [
        "+callbacks.fault._target_=tests.faults.SignalAt",
        "+callbacks.fault.step=4",
        f"+callbacks.fault.signum={signum}",
    ]
    with pytest.raises(SystemExit) as exit_info:
        train(make_cfg(*EXACT, *fault, output_dir=cut))
    assert exit_info.value.code == 128 + {"SIGTERM": 15, "SIGUSR1": 10}[signum]
    saved = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]
    assert not (cut / "results.json").exists()

    # The run's own config comes back from the checkpoint; its test-only callback is vouched for by naming it.
    train(make_cfg(*EXACT, *fault, "resume=auto", output_dir=cut))
    a, b = results(ref), results(cut)
    assert {k: a[k] for k in METRICS} == {k: b[k] for k in METRICS}
    assert_same_weights(ref / "checkpoints" / "last.ckpt", cut / "checkpoints" / "last.ckpt")
    assert_same_weights(ref / "checkpoints" / "best.ckpt", cut / "checkpoints" / "best.ckpt")


def test_save_failing_half_way_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"net.w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def write_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"\x80\x02partial checkpoint bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match=f"no space left on {tmp_path}"):
        io.save_checkpoint({"state_dict": {"net.w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["state_dict"]["net.w"], torch.ones(3))


def test_nonfinite_weights_are_never_written(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "best.ckpt"
    io.save_checkpoint({"state_dict": {"net.w": torch.ones(2)}}, path)
    before = path.read_bytes()
    with pytest.raises(NonFiniteError, match=r"refusing to write .*best\.ckpt: non-finite values in net\.w"):
        io.save_checkpoint({"state_dict": {"net.w": torch.tensor([1.0, float("nan")])}}, path)
    assert path.read_bytes() == before


def test_nan_loss_stops_the_run_naming_the_step(make_cfg, tmp_path):
    cfg = make_cfg("+callbacks.fault._target_=tests.faults.NaNLossAt", "+callbacks.fault.step=2")
    with pytest.raises(NonFiniteError, match=r"non-finite training loss \(nan\) at global step 2 \(epoch 0, batch 2\)"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()


def test_nan_loss_skipped_and_counted(make_cfg, tmp_path):
    cfg = make_cfg(
        "+callbacks.fault._target_=tests.faults.NaNLossAt",
        "+callbacks.fault.step=1",
        "module.nonfinite=skip",
        "test=false",
    )
    train(cfg)
    out = results(tmp_path / "run")
    assert out["train/skipped_nonfinite"] == 1
    assert out["global_step"] == 4  # the skipped update still counts as a step
    for path in ("best", "last"):  # written after the skipped update
        for k, v in weights(tmp_path / "run" / "checkpoints" / f"{path}.ckpt").items():
            if k.startswith("net."):
                assert torch.isfinite(v).all(), k


def net_with_grads(grad_w: float) -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    net = torch.nn.Linear(2, 1)
    net.weight.grad = torch.full_like(net.weight, grad_w)
    net.bias.grad = torch.ones_like(net.bias)
    return net, torch.optim.SGD(net.parameters(), lr=0.1)


def test_update_check_names_the_parameter_with_non_finite_gradients():
    net, opt = net_with_grads(float("inf"))
    with pytest.raises(NonFiniteError, match=r"non-finite gradients at global step 5 in weight\. Lower"):
        check_update(net, opt, losses=[(0, torch.tensor(1.0))], step=5, epoch=0, mode="error")


def test_update_check_names_a_non_finite_loss_before_the_gradients_it_caused():
    net, opt = net_with_grads(float("nan"))
    losses = [(3, torch.tensor(0.5)), (4, torch.tensor(float("nan")))]
    with pytest.raises(NonFiniteError, match=r"loss \(nan\) at global step 9 \(epoch 1, batch 4\)"):
        check_update(net, opt, losses=losses, step=9, epoch=1, mode="error")


def test_update_check_skip_clears_the_gradients_and_passes_finite_updates():
    net, opt = net_with_grads(1.0)
    assert check_update(net, opt, losses=[(0, torch.tensor(2.0))], step=0, epoch=0, mode="skip")
    assert net.weight.grad is not None
    net.weight.grad[0, 0] = float("nan")
    assert not check_update(net, opt, losses=[(1, torch.tensor(2.0))], step=1, epoch=0, mode="skip")
    assert net.weight.grad is None and net.bias.grad is None
    # Without a net (fp16: the grad scaler handles gradients) only the losses are checked, and nothing cleared.
    net, opt = net_with_grads(float("nan"))
    assert check_update(None, opt, losses=[(0, torch.tensor(1.0))], step=0, epoch=0, mode="error")
    assert not check_update(None, opt, losses=[(0, torch.tensor(float("inf")))], step=0, epoch=0, mode="skip")
    assert net.weight.grad is not None


def test_all_finite_over_mixed_dtypes_and_each_kind_of_bad_value():
    grads = [torch.ones(3, dtype=torch.bfloat16), torch.ones(2, 2)]
    assert all_finite([torch.tensor(0.5), *grads]) and all_finite([])
    assert all_finite([torch.full((1000,), 3e38)])  # finite, though its L2 norm overflows
    net, opt = net_with_grads(3e38)
    assert check_update(net, opt, losses=[(0, torch.tensor(1.0))], step=0, epoch=0, mode="error")
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert not all_finite([torch.tensor(0.5), grads[0], torch.tensor([1.0, bad])])
        assert not all_finite([torch.tensor(0.5), torch.tensor([1.0, bad], dtype=torch.bfloat16), grads[1]])


def write_image_folder(root: Path, *, per_class: int = 6, size: int = 16) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                path = root / split / c / f"{i}.jpg"
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
                files.append(path)
    return files


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_skipped_and_counted_in_training_raises_in_evaluation(make_cfg, tmp_path):
    root = tmp_path / "images"
    write_image_folder(root)
    truncate(root / "train" / "dog" / "3.jpg")
    cfg = make_cfg(
        "data=image_folder",
        f"data.root={root}",
        "data.num_classes=2",
        "data.image_size=16",
        "data.batch_size=4",
        "data.pin_memory=false",
        "data.persistent_workers=false",
        "model=lenet",
        "trainer.limit_train_batches=null",
        "trainer.limit_val_batches=null",
        "trainer.limit_test_batches=null",
    )
    train(cfg)
    assert results(tmp_path / "run")["data/skipped"] == 1  # 12 training images, one epoch, one unreadable

    truncate(root / "val" / "cat" / "0.jpg")
    # Found before training (trainer/checks.py: check_eval_files), not after an epoch.
    with pytest.raises(
        RuntimeError, match=r"unreadable file\(s\) in the evaluation splits \(val, test\).*val/cat/0\.jpg"
    ):
        train(
            make_cfg(
                "data=image_folder",
                f"data.root={root}",
                "data.num_classes=2",
                "data.image_size=16",
                "data.pin_memory=false",
                "data.persistent_workers=false",
                output_dir=tmp_path / "run2",
            )
        )


def fake_checkpoint(path: Path, target: str) -> Path:
    config = {"seed": 0, "model": {"_target_": target, "num_classes": 2}, "data": {}}
    torch.save({"state_dict": {}, "hyper_parameters": {"config": config}}, path)
    return path


@pytest.mark.parametrize("target", ["os.system", "trainer.module.torch.save", "subprocess.Popen"])
def test_checkpoint_config_outside_allowlist_is_refused(tmp_path, target):
    path = fake_checkpoint(tmp_path / "evil.ckpt", target)
    with pytest.raises(UnsafeConfigError, match=rf"evil\.ckpt: model\._target_='{target}'"):
        stored_config(load_checkpoint(path), path)


def test_checkpoint_config_inside_allowlist_is_accepted(tmp_path):
    path = fake_checkpoint(tmp_path / "ok.ckpt", "models.net.Net")
    assert stored_config(load_checkpoint(path), path)["model"]["_target_"] == "models.net.Net"
