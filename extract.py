"""Extract features: ``python extract.py input=<folder|list> output=<dir> (ckpt_path=<f> | model=<name>)``.

See conf/extract.yaml and docs/extract.md.
"""

import os
from pathlib import Path

os.environ.setdefault("VISFEAT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import trainer.resolvers  # noqa: E402,F401  (registers ${visfeat.*} before Hydra composes the config)


@hydra.main(version_base="1.3", config_path="conf", config_name="extract")
def main(cfg: DictConfig) -> None:
    from trainer.extract import extract

    extract(cfg)


if __name__ == "__main__":
    main()
