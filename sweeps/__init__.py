"""Sweeps: multirun summaries, tags enforced for multiruns, and the study side of Optuna trials."""
