"""eval.py takes the module's evaluation options (module.tta, video views) and refuses keys it would not use."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from nets.build import net_from_checkpoint
from nets.stored import load_checkpoint, stored_config
from nets.tta import tta_logits
from tests.conftest import run_script
from trainer.checks import ConfigError
from trainer.run import build_datamodule, evaluate, train


@pytest.fixture
def digits_ckpt(make_cfg, tmp_path):
    train(make_cfg("trainer.limit_train_batches=2", "test=false"))
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


def eval_cfg(make_cfg, tmp_path, ckpt, *overrides, name="eval"):
    return make_cfg(f"ckpt_path={ckpt}", *overrides, config_name="eval", output_dir=tmp_path / name)


def test_eval_tta_mirror_is_the_mirrored_accuracy(make_cfg, tmp_path, digits_ckpt):
    plain = evaluate(eval_cfg(make_cfg, tmp_path, digits_ckpt, "+data.batch_size=128", name="plain"))
    # `+module.tta=mirror` (silently ignored before) and `module.tta=mirror` alike.
    mirror = evaluate(eval_cfg(make_cfg, tmp_path, digits_ckpt, "+module.tta=mirror", "+data.batch_size=128"))
    assert plain["tta"] == "none" and mirror["tta"] == "mirror"
    assert mirror["test/loss"] != pytest.approx(plain["test/loss"], abs=1e-4)

    # The same by hand: the checkpoint's net on the test split, logits of image and mirror image averaged.
    ckpt = load_checkpoint(digits_ckpt)
    stored = OmegaConf.create(stored_config(ckpt, digits_ckpt))
    datamodule = build_datamodule(stored.data, stored.augment)
    datamodule.setup("test")
    net = net_from_checkpoint(ckpt, digits_ckpt).eval()
    correct = total = 0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            batch = datamodule.on_after_batch_transfer(batch, 0)
            logits = tta_logits(net, batch["input"], "mirror")
            correct += int((logits.argmax(1) == batch["target"]).sum())
            total += len(batch["target"])
    assert mirror["test/acc"] == pytest.approx(correct / total, abs=1e-6)


@pytest.mark.parametrize(
    ("override", "named"),
    [("+module.lr=0.1", "module.lr"), ("+test=false", "test"), ("+tta=mirror", "tta")],
)
def test_eval_refuses_keys_it_does_not_use(make_cfg, tmp_path, override, named):
    with pytest.raises(ConfigError, match=f"does not use {named}"):
        evaluate(eval_cfg(make_cfg, tmp_path, tmp_path / "absent.ckpt", override))


def test_eval_py_rejects_an_unknown_tta_mode_by_name(tmp_path):
    proc = run_script("eval.py", f"ckpt_path={tmp_path}/x.ckpt", "module.tta=flip", f"hydra.run.dir={tmp_path / 'e'}",
                      check=False)  # fmt: skip
    assert proc.returncode != 0 and "module.tta='flip' must be one of" in proc.stderr


def test_eval_tta_is_refused_for_clips_and_views_are_options(make_cfg, tmp_path):
    data = tmp_path / "data"
    small = ["data.train_per_class=1", "data.val_per_class=1", "data.test_per_class=1", "data.num_frames=4",
             "data.crop_size=16", "data.batch_size=4"]  # fmt: skip
    train(make_cfg("experiment=video_synthetic", f"paths.data_dir={data}", "model.temporal.hidden_size=8", *small))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    given = ["data=synthetic_video", f"paths.data_dir={data}", *small]
    with pytest.raises(
        ConfigError, match=r"module.tta=mirror augments images, .* takes clips; .* its input is \[3, 4, 16, 16\]"
    ):
        evaluate(eval_cfg(make_cfg, tmp_path, ckpt, "module.tta=mirror", *given))
    results = evaluate(eval_cfg(make_cfg, tmp_path, ckpt, *given, "data.test_clips=3", name="views"))
    assert results["tta"] == "none" and "test/clip_acc" in results
