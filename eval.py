"""Evaluate a checkpoint: ``python eval.py ckpt_path=<file> [data=<name>] [+data.<key>=<value>]``."""

import hydra
from omegaconf import DictConfig

import runs.resolvers  # noqa: F401  (registers ${visfeat.*} before Hydra composes the config)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from trainer.run import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
