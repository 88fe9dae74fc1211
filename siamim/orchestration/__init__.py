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
* :mod:`.errors` - the launch's user errors (exit 1: the job failed; exit 2: bad input); here, with the
  checkout (:data:`REPO_ROOT`) and the submitted job this driver runs as (:func:`job_config`), because
  every subpackage uses them.
"""

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout, for an editable install (pip install -e .)


def job_config() -> dict:
    """The ``ray job submit`` job config (runtime_env, metadata) of this driver; {} otherwise."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return {}


def submission_id() -> str | None:
    """The ``ray job submit`` id when this driver runs as a submitted job."""
    return job_config().get("metadata", {}).get("job_submission_id")
