"""Config faults fail when the config is composed or checked, before anything is built, naming the key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from trainer.checks import ConfigError, check_config


def test_misspelled_key_fails_at_composition_naming_it(make_cfg):
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'trainer\.max_epoch'"):
        make_cfg("trainer.max_epoch=3")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=abc", r"trainer\.max_epochs='abc' must be an integer"),
        ("data.batch_size=1.5", r"data\.batch_size=1\.5 must be an integer"),
        ("optimizer.lr=fast", r"optimizer\.lr='fast' must be a number"),
        ("seed=x", r"seed='x' must be an integer"),
        ("optimizer.lr=-0.1", r"optimizer\.lr=-0\.1 must be positive"),
    ],
)
def test_wrong_type_fails_naming_the_key(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        check_config(make_cfg(override))


def test_missing_mandatory_value_fails_naming_the_key(make_cfg):
    with pytest.raises(ConfigError, match=r"no value for data\.num_classes .*set it: data\.num_classes=<value>"):
        check_config(make_cfg("data=video_folder"))


def test_the_default_config_passes(make_cfg):
    check_config(make_cfg())
