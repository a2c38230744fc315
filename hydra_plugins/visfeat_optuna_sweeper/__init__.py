"""Hydra sweeper ``hydra/sweeper=visfeat_optuna``: an Optuna study driven by ask/tell (see sweeper.py).

``hydra_plugins`` itself is a namespace package (no ``__init__.py``), as Hydra's plugin discovery wants.
"""
