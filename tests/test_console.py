"""A quiet console: a default run logs only our own lines (plus the progress bar and the result table) and
raises no warnings; the third-party messages filtered are named ones, and our own warnings still surface."""

from __future__ import annotations

import logging
import re
import warnings

import pytest
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from runs.console import THIRD_PARTY_LOG_LINES, quiet_third_party
from tests.conftest import run_script
from trainer.run import train

OUR_PACKAGES = ("trainer", "runs", "data", "models", "features", "weights", "hydra_plugins", "__main__")
LOG_LINE = re.compile(r"^\[[\d\- :,]+\]\[([\w.]+)\]\[(\w+)\] - (.*)$")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, Lightning says trainer=default leaves it unused")
def test_default_run_logs_only_our_lines_and_warns_nothing(make_cfg, caplog):
    """The default config (digits, LeNet), one epoch of it: the log_every_n_steps warning is fixed at its
    cause (19 batches < 50), Lightning's tip, device lines and deprecation inside Lightning are filtered."""
    cfg = make_cfg("trainer.max_epochs=1", "~callbacks.progress_bar", "extras.print_config=false", small=False)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("default")
        train(cfg)
    assert [f"{w.category.__name__}: {w.message} ({w.filename})" for w in caught] == []
    foreign = [(r.name, r.getMessage()) for r in caplog.records if not r.name.startswith(OUR_PACKAGES)]
    assert foreign == []
    assert any(r.name == "trainer.run" and r.getMessage().startswith("results: ") for r in caplog.records)


def test_only_the_named_messages_are_dropped(caplog):
    quiet_third_party()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](...)")
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("GPU available: True (cuda), used: False")  # worth seeing: kept
        rank_zero_info("Restoring states from the checkpoint path at /r/checkpoints/last.ckpt")  # a resume: kept
        rank_zero_info("Restoring states from the checkpoint path at /r/checkpoints/best.ckpt")  # test after fit
    assert [r.getMessage() for r in caplog.records] == [
        "GPU available: True (cuda), used: False",
        "Restoring states from the checkpoint path at /r/checkpoints/last.ckpt",
    ]
    assert len({name for name, _ in THIRD_PARTY_LOG_LINES}) == 2  # Lightning's two loggers, nothing else


def test_our_own_deprecation_warnings_surface():
    """pyproject's pytest filterwarnings ignores only named third-party warnings: ours are not hidden."""
    with pytest.warns(DeprecationWarning, match="ours"):
        warnings.warn("ours", DeprecationWarning, stacklevel=1)


def test_log_interval_follows_the_number_of_batches(make_cfg, tmp_path):
    """5 batches an epoch: step metrics every 5 steps, so each epoch writes a train/loss_step row."""
    cfg = make_cfg("trainer.max_epochs=2", "trainer.limit_train_batches=5", "test=false")
    train(cfg)
    rows = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [r.split(",")[header.index("step")] for r in rows[1:] if r.split(",")[header.index("train/loss_step")]]
    assert steps == ["4", "9"]


@pytest.mark.slow
def test_console_of_a_default_run(tmp_path):
    """`python train.py` (one epoch): every log line on the console is ours; no warning lines."""
    proc = run_script("train.py", "trainer.max_epochs=1", "extras.print_config=false", f"paths.log_dir={tmp_path}")
    lines = (proc.stdout + proc.stderr).splitlines()
    logged = [LOG_LINE.match(line) for line in lines]
    foreign = [m.group(0) for m in logged if m and not m.group(1).startswith(OUR_PACKAGES)]
    assert foreign == []
    assert not [line for line in lines if re.search(r"\.py:\d+: \w*(Warning|deprecated)", line)]
    assert not [line for line in lines if "Tip:" in line or "log_every_n_steps" in line]
    assert any("test/acc" in line for line in lines)  # the result table


def test_a_missing_dataset_ends_in_its_message_after_a_short_summary(tmp_path):
    """`python train.py data=ucf101` without the videos: a few lines saying what the run is, then the error
    with where to download UCF101 and how to lay it out; no traceback. The full config is in the run dir."""
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py", "data=ucf101", f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={run_dir}", check=False
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: no video dataset: {tmp_path / 'nowhere'} is not a folder. UCF101: download")
    for words in ("https://www.crcv.ucf.edu/data/UCF101.php", "<folder>/UCF-101/<class>/", "ucfTrainTestlist"):
        assert words in error
    summary = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(summary) <= 6, summary
    assert summary[0].startswith("config: data=ucf101 model=lenet ")
    assert f"full config: {run_dir / 'config_tree.txt'}" in proc.stdout
    tree = (run_dir / "config_tree.txt").read_text()
    assert "_target_: data.video.datamodule.VideoDataModule" in tree and "max_epochs: 20" in tree


def test_user_errors_print_their_message_and_others_keep_their_traceback(capsys, monkeypatch):
    from runs.console import user_errors
    from trainer.checks import ConfigError

    with pytest.raises(SystemExit) as exit_info, user_errors():
        raise ConfigError("data.batch_size=0 must be a positive integer")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: data.batch_size=0 must be a positive integer\n"
    with pytest.raises(KeyError), user_errors():  # a bug, not a user error: the traceback stays
        raise KeyError("a bug")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError), user_errors():
        raise ConfigError("shown with its traceback when asked for")


def test_pin_memory_only_where_batches_go_to_a_gpu(make_cfg, tmp_path):
    """data=cifar10 sets pin_memory (for GPUs); on a CPU run torch would warn for every loader."""
    from tests.data_utils import write_cifar10
    from trainer.run import build_datamodule

    write_cifar10(tmp_path / "cifar10", n_per_batch=20, n_test=16)
    cfg = make_cfg("data=cifar10", f"data.root={tmp_path / 'cifar10'}", "data.val_size=10", "data.in_memory=false")
    assert cfg.data.pin_memory
    datamodule = build_datamodule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        next(iter(datamodule.train_dataloader()))
    assert datamodule.pins_memory() == torch.cuda.is_available()
