"""Run-keeping: atomic writes, writing checkpoints, the run-dir lock, distributed launch, results, plots,
resolvers, the console; runs/lightning_private.py is the one seam to Lightning's private API."""
