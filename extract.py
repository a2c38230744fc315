"""Extract features: ``python extract.py input=<folder|list> output=<dir> (ckpt_path=<f> | model=<name>)``.

See conf/extract.yaml and docs/extract.md.
"""

import hydra
from omegaconf import DictConfig

import runs.resolvers  # noqa: F401  (registers ${visfeat.*} before Hydra composes the config)


@hydra.main(version_base="1.3", config_path="conf", config_name="extract")
def main(cfg: DictConfig) -> None:
    from features.extract import extract

    extract(cfg)


if __name__ == "__main__":
    main()
