"""``make demo``: the embedded offline default, end to end on 2 CPU cores (see :mod:`heinsen_zoo.demo.run`).

A routing head over all 7 hidden states of the frozen all-MiniLM-L6-v2 against two logistic-regression
baselines on mean-pooled hidden states, on held-out BBC News articles. Run ``python -m heinsen_zoo.demo``.
"""

from .run import main

__all__ = ["main"]
