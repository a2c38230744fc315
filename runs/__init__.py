"""Run-keeping: atomic writes, checkpoints, faults and resume, distributed launch, results, sweeps, plots."""
