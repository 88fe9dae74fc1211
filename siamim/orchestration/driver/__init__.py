"""The pretraining job's driver and what every driver shares.

* :mod:`.launch` - ``jobs/pretrain.py``: config, preflight, MLflow run, ``TorchTrainer`` fit, summary.
* :mod:`.cluster` - the driver's Ray connection (the job's cluster, an address, or a local instance).
* :mod:`.preflight` - fail-fast checks before any worker starts, and the resource watch during a fit.
* :mod:`.trainer` - the Ray Train V2 ``TorchTrainer`` and the function each worker runs.
* :mod:`.hooks` - user code called in every worker with each metrics report.
* :mod:`.submitted` - what a driver under ``ray job submit`` must not write into.
* :mod:`.tune` - what the grid and the search drivers share around one Ray Tune experiment.
"""
