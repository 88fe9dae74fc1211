"""Ray / MLflow / object-storage glue around the SiameseIM core.

Imports flow one way: ``jobs/`` -> ``siamim.orchestration`` -> ``siamim`` core (which imports no
ray, mlflow or boto3). Inside, the drivers (``driver``, ``ablation``, ``search``) use ``runs``,
``tracking`` and ``data``; those three never import a driver.

* :mod:`.driver` - the pretraining job's driver (``jobs/pretrain.py``): cluster connection,
  preflight and resource fit, the Ray Train ``TorchTrainer``, worker hooks, what the grid and the
  search share around a Tune experiment.
* :mod:`.runs` - where runs live and how they continue: storage locations (local, ``s3://``),
  checkpoints and ``--checkpoint`` references, ``--resume``, the one-launch-per-run claim.
* :mod:`.tracking` - MLflow: runs and their lifecycle, the live metrics stream, evaluation child
  runs, the model registry, the run report, links into the UI.
* :mod:`.data` - Ray Data: dataset conversion to Parquet shards and streaming them to the workers.
* :mod:`.ablation` - the paper's ablation grid (``jobs/ablate.py``): rows, trial, table.
* :mod:`.search` - the hyperparameter search (``jobs/search.py``): space, spec, trial, resumable
  ASHA, report.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout, for an editable install (pip install -e .)
