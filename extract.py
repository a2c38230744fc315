"""Extract features: ``python extract.py input=<folder|list> output=<dir> (ckpt_path=<f> | model=<name>)``.

See conf/extract.yaml and docs/extract.md.
"""

import hydra
from omegaconf import DictConfig

import runs.resolvers  # noqa: F401  (registers ${visfeat.*} before Hydra composes the config)


@hydra.main(version_base="1.3", config_path="conf", config_name="extract")
def main(cfg: DictConfig) -> None:
    from features.extract import extract
    from runs.console import user_errors

    with user_errors():  # a bad value or a missing file: its message, no traceback
        extract(cfg)


if __name__ == "__main__":
    main()
