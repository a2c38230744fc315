"""Evaluate a checkpoint: ``python eval.py ckpt_path=<file> [data=<name>] [+data.<key>=<value>]``."""

import hydra
from omegaconf import DictConfig

import runs.resolvers  # noqa: F401  (registers ${visfeat.*} before Hydra composes the config)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from runs.console import user_errors
    from trainer.run import evaluate

    with user_errors():  # a bad value or a missing file: its message, no traceback
        evaluate(cfg)


if __name__ == "__main__":
    main()
