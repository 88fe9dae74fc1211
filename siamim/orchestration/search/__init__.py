"""The hyperparameter search (``jobs/search.py``).

* :mod:`.driver` - the search as a Ray Tune experiment with ASHA, tracked in MLflow.
* :mod:`.space` - the YAML search space and its samplers.
* :mod:`.spec` - the search's spec and its checks before anything starts.
* :mod:`.trial` - one trial: pretrain one sampled config, reporting live to Tune.
* :mod:`.scheduler` - ASHA whose rung records survive a killed driver.
* :mod:`.report` - the table, the metric-vs-step plot and the best config as a preset.
"""
