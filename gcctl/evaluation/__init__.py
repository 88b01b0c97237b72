"""Scoring whole models zero-shot: a checkpoint on a dataset table (`checkpoints`), and StarFT's transfer protocol,
a checkpoint's zero-shot suite over source, domain-shift and group-shift targets (`transfer`)."""
