"""The Lightning callbacks of a fit, one home: history, checkpoints, faults, EMA, fine-tuning, lookahead, ..."""
