"""Predict classes: ``python predict.py ckpt_path=<file> input=<image | video | folder | list> [top_k=5]``.

See conf/predict.yaml and docs/predict.md.
"""

import hydra
from omegaconf import DictConfig

import runs.resolvers  # noqa: F401  (registers ${visfeat.*} before Hydra composes the config)


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from features.predict import predict

    predict(cfg)


if __name__ == "__main__":
    main()
