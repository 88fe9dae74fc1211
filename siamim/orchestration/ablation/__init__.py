"""The paper's ablation grid (``jobs/ablate.py``).

* :mod:`.driver` - the grid as a Ray Tune experiment tracked in MLflow.
* :mod:`.rows` - the rows (a-k): switches, published numbers, configs.
* :mod:`.trial` - one trial: pretrain a row, evaluate it, report to Tune and MLflow.
* :mod:`.table` - the table, the paired differences and the plot (pure functions).
"""
