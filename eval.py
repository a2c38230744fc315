"""Evaluate a checkpoint: ``python eval.py ckpt_path=<file> [data=<name>] [+data.<key>=<value>]``."""

import os
from pathlib import Path

os.environ.setdefault("VISFEAT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import trainer.resolvers  # noqa: E402,F401  (registers ${visfeat.*} before Hydra composes the config)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from trainer.run import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
