"""Train: ``python train.py [group=option ...] [key=value ...]`` (see conf/train.yaml and the README)."""

import hydra
from omegaconf import DictConfig

import runs.resolvers  # noqa: F401  (registers ${visfeat.*} before Hydra composes the config)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from runs.console import user_errors
    from trainer.run import train

    with user_errors():  # a bad value or a missing file: its message, no traceback
        return train(cfg)


if __name__ == "__main__":
    main()
