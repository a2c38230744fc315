"""Export a checkpoint's net: ``python export.py ckpt_path=<file> format=onnx|torchscript [output=<file>]``.

See conf/export.yaml and docs/export.md.
"""

import hydra
from omegaconf import DictConfig

import runs.resolvers  # noqa: F401  (registers ${visfeat.*} before Hydra composes the config)


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from runs.console import user_errors
    from trainer.export import export

    with user_errors():  # a bad value or a missing file: its message, no traceback
        export(cfg)


if __name__ == "__main__":
    main()
