"""The MLflow model registry: a run's exported encoder (``encoder/``, timm's folder) as a registered model version.

``jobs/pretrain.py --register NAME`` calls :func:`register_encoder`; ``jobs/evaluate.py --checkpoint
models:/NAME/<version|latest>`` (or ``@alias``) resolves it with :func:`resolve_model_uri`. The folder is not an
MLflow "MLmodel", so ``mlflow.register_model`` refuses it (MLflow 3.17: "Unable to find a logged_model");
``create_model_version`` records it as the version's source.
"""

from __future__ import annotations

import re

from siamim.errors import UserError

ENCODER_ARTIFACT = "encoder"  # the run's artifact folder of the exported encoder (trainer.py writes it)
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))$")


class RegistryError(UserError, LookupError):
    """A ``models:/`` reference does not name a registered version; the message says what exists."""


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def register_encoder(
    tracking_uri: str, run_id: str, name: str, artifact_path: str = ENCODER_ARTIFACT, tags: dict | None = None
) -> str:
    """Register ``runs:/<run_id>/<artifact_path>`` as a new version of model ``name``; returns the version."""
    client = _client(tracking_uri)
    try:
        client.get_registered_model(name)
    except Exception:
        try:
            client.create_registered_model(name, description="SiameseIM encoder (timm save_for_hf folder)")
        except Exception:  # created concurrently (two trials registering the same name)
            client.get_registered_model(name)
    version = client.create_model_version(
        name,
        source=f"runs:/{run_id}/{artifact_path}",
        run_id=run_id,
        tags={k: str(v) for k, v in (tags or {}).items()},
        description=f"exported encoder of run {run_id}; timm.create_model('local-dir:<download>', pretrained=True)",
    )
    return str(version.version)


def resolve_model_uri(uri: str, tracking_uri: str) -> tuple[str, str, str]:
    """``models:/NAME/<version|latest>`` or ``models:/NAME@alias`` -> ``(run_id, artifact path, version)``."""
    match = MODEL_URI.match(uri)
    if not match:
        raise RegistryError(f"{uri!r} is not models:/<name>/<version>, models:/<name>/latest or models:/<name>@<alias>")
    client = _client(tracking_uri)
    name = match["name"]
    try:
        if match["alias"]:
            mv = client.get_model_version_by_alias(name, match["alias"])
        elif match["version"] == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise RegistryError(f"registered model {name!r} has no versions in {tracking_uri}")
            mv = max(versions, key=lambda v: int(v.version))
        else:
            mv = client.get_model_version(name, match["version"])
    except RegistryError:
        raise
    except Exception as err:
        raise RegistryError(
            f"{uri}: no such registered model version in {tracking_uri} ({str(err).splitlines()[0]}); "
            "register one with jobs/pretrain.py --register NAME"
        ) from err
    source = mv.source or ""
    if source.startswith("runs:/"):
        run_id, _, path = source[len("runs:/") :].partition("/")
        return run_id, path, str(mv.version)
    if mv.run_id:
        return mv.run_id, ENCODER_ARTIFACT, str(mv.version)
    raise RegistryError(f"{uri}: version {mv.version} has source {source!r}, not a run's artifact")
