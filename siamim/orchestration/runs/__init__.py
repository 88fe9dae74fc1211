"""Where runs live and how they continue.

* :mod:`.storage` - a run's location: a local directory or an object-store URI (``s3://...``).
* :mod:`.checkpoints` - a run's Ray checkpoints: integrity, the one to resume from, their metadata.
* :mod:`.refs` - what a ``--checkpoint`` reference points at (file, run folder, MLflow run or model).
* :mod:`.resume` - ``--resume``: the run record, its config, its checkpoint and how far it trains.
* :mod:`.claims` - one live launch per run name.
"""
