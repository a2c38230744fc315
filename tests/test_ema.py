"""Weight EMA: the average itself, evaluation and checkpoints with it, exact resume; and a real tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer.callbacks.ema import EMA

DECAY = 0.7
STEPS_PER_EPOCH = 3


class Tiny(pl.LightningModule):
    """A linear layer behind BatchNorm (float and integer buffers); records the weights it evaluates with."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 3)
        self.seen: dict[str, list[torch.Tensor]] = {"val": [], "test": []}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.fc(self.norm(x)), y)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen["val"].append(self.fc.weight.detach().clone())

    def test_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen["test"].append(self.fc.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)


class Recorder(pl.Callback):
    """The raw weights after every optimizer step."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 4, generator=g), torch.randint(3, (24,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=24 // STEPS_PER_EPOCH)


def fit(tmp_path: Path, callbacks: list[pl.Callback], *, epochs: int = 2, ckpt_path: str | None = None) -> Tiny:
    module = Tiny()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[
            *callbacks,
            pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1),
        ],
    )
    trainer.fit(module, train_dataloaders=loader(), val_dataloaders=loader(), ckpt_path=ckpt_path)
    module.trainer_ref = trainer
    return module


def reference_ema(init: dict[str, torch.Tensor], steps: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    ema = {k: v.clone().float() if v.is_floating_point() else v.clone() for k, v in init.items()}
    for w in steps:
        ema = {k: DECAY * ema[k] + (1 - DECAY) * w[k] if w[k].is_floating_point() else w[k].clone() for k in ema}
    return ema


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


def test_ema_average_validation_and_checkpoint(tmp_path):
    init = {k: v.clone() for k, v in Tiny().state_dict().items()}
    plain = Recorder()
    fit(tmp_path / "plain", [plain])
    rec, ema = Recorder(), EMA(decay=DECAY, warmup=False)
    module = fit(tmp_path / "ema", [rec, ema])

    # The EMA callback does not disturb training: raw weights step for step as without it.
    assert len(rec.weights) == 2 * STEPS_PER_EPOCH
    for a, b in zip(rec.weights, plain.weights, strict=True):
        assert_same(a, b)
    expected = reference_ema(init, rec.weights)
    assert_same(ema.shadow, expected)
    # Validation after epoch 1 ran with the EMA of its 3 steps, after epoch 2 with the final EMA.
    torch.testing.assert_close(module.seen["val"][0], reference_ema(init, rec.weights[:3])["fc.weight"])
    torch.testing.assert_close(module.seen["val"][1], expected["fc.weight"])
    # After fit the model holds the EMA weights (testing without a checkpoint uses them).
    assert_same(module.state_dict(), expected)

    ckpt = torch.load(tmp_path / "ema" / "epoch=1.ckpt", weights_only=True)
    assert_same(ckpt["state_dict"], expected)
    assert_same(ckpt["callbacks"]["EMA"]["raw"], rec.weights[-1])
    assert ckpt["callbacks"]["EMA"]["num_updates"] == 2 * STEPS_PER_EPOCH

    # Testing a checkpoint scores its EMA weights, not the raw ones in the callback state.
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[EMA(decay=DECAY)],
    )
    fresh = Tiny()
    trainer.test(fresh, dataloaders=loader(), ckpt_path=str(tmp_path / "ema" / "epoch=0.ckpt"), weights_only=True)
    torch.testing.assert_close(fresh.seen["test"][0], reference_ema(init, rec.weights[:3])["fc.weight"])


def test_resume_continues_exactly(tmp_path):
    rec, ema = Recorder(), EMA(decay=DECAY, warmup=True)
    fit(tmp_path / "full", [rec, ema])

    rec1 = Recorder()
    fit(tmp_path / "part", [rec1, EMA(decay=DECAY, warmup=True)], epochs=1)
    resumed_rec, resumed = Recorder(), EMA(decay=DECAY, warmup=True)
    fit(tmp_path / "resumed", [resumed_rec, resumed], ckpt_path=str(tmp_path / "part" / "epoch=0.ckpt"))

    for a, b in zip(resumed_rec.weights, rec.weights[STEPS_PER_EPOCH:], strict=True):
        assert_same(a, b)  # training resumed from the raw weights, not the EMA ones
    assert resumed.num_updates == ema.num_updates == 2 * STEPS_PER_EPOCH
    assert_same(resumed.shadow, ema.shadow)


def test_bad_decay_is_rejected():
    with pytest.raises(ValueError, match="callbacks.ema.decay=1.5"):
        EMA(decay=1.5)


def test_strong_augment_mixing_and_ema_train(make_cfg):
    """A real tiny run: RandAugment + cutout, mixup and cutmix with label smoothing, EMA weights."""
    from hydra.utils import instantiate

    from data.mix import MixupCutmix
    from trainer.run import train

    cfg = make_cfg(
        "augment=cifar_strong",
        "augment.mixup_alpha=0.2",
        "augment.cutmix_alpha=1.0",
        "augment.mix_prob=0.8",
        "module.label_smoothing=0.1",
        "callbacks=ema",
        "callbacks.ema.decay=0.9",
    )
    assert isinstance(instantiate(cfg.augment.mixer), MixupCutmix)
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.0 <= results["test/acc"] <= 1.0 and results["epochs"] == 1
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    raw = ckpt["callbacks"]["EMA"]["raw"]
    assert raw.keys() <= ckpt["state_dict"].keys()
    assert any(not torch.equal(raw[k], ckpt["state_dict"][k]) for k in raw)  # EMA differs from the raw weights
    assert ckpt["callbacks"]["EMA"]["num_updates"] == 4
