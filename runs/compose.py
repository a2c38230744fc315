"""The config an entry script would compose, outside Hydra's main(): for tests, benchmarks and notebooks."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import runs.resolvers  # noqa: F401  (the ${visfeat.*} resolvers of conf/hydra, as in train.py)

CONF = Path(__file__).resolve().parent.parent / "conf"


def compose_config(*overrides: str, output_dir: Path, config_name: str = "train") -> DictConfig:
    """The config train.py would compose for ``overrides``, with its run dir at ``output_dir``.

    HydraConfig is set as in a real run so `${hydra:...}` interpolations and HydraConfig.get() work.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        # Not new default dirs claimed under outputs/ when something resolves the whole config.
        cfg.hydra.run.dir = cfg.hydra.sweep.dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg
