"""Evaluation: ISC2021 metrics, exhaustive search for predictions, a model on a benchmark, the copy threshold (its calibration rules and verdict), per-family scores and transfer, PR plots."""
