"""infra/ as far as this machine allows (no container engine, no Kubernetes, no cloud).

The cluster-launcher YAML passes Ray's own config schema; the KubeRay manifests
parse, run the image the Dockerfile builds and entrypoints that exist and parse
with the job's own argument parser; the image's pip set is pyproject's pins; and
the files the Dockerfile copies are enough to read shards from S3 (the code path
of data.dataset=parquet), run from a copy of exactly those files.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"


def _dockerfile() -> str:
    return (INFRA / "Dockerfile").read_text()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_cluster_launcher_yaml_passes_rays_schema():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does: fill defaults, check ray-schema.json
    broken = {**config, "available_node_types": {"head": {"node_config": {}}}}  # resources missing
    with pytest.raises(jsonschema.ValidationError, match="resources"):
        validate_config(prepare_config(broken))
    assert config["docker"]["image"].split("/")[-1].startswith("siamim:")


def _manifests() -> list[dict]:
    docs = []
    for path in sorted((INFRA / "kuberay").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _images(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [
            i for v in node.values() for i in _images(v)
        ]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def test_kuberay_manifests_parse_and_name_the_image_and_real_entrypoints():
    from jobs.pretrain import build_parser
    from siamim.config import load_config

    docs = _manifests()
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "RayJob"} <= kinds
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1"
        images = _images(doc)
        assert images and all(re.fullmatch(r"REGISTRY/siamim:latest(-gpu)?", i) for i in images), images
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["rayVersion"] == "2.60.0"
        if doc["kind"] != "RayJob":
            continue
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[0] == "python" and (REPO / argv[1]).is_file(), argv
        if argv[1] == "jobs/pretrain.py":
            args = build_parser().parse_args(argv[2:])
            load_config(args.config, args.overrides)  # the preset and overrides exist and validate
        elif argv[1] == "jobs/prepare_data.py":
            from jobs.prepare_data import build_parser as prep_parser

            prep_parser().parse_args(argv[2:])


def test_worker_groups_match_the_jobs_elastic_sizes():
    """A RayJob's GPU worker group spans exactly the job's elastic range (``run.min_workers`` ..
    ``--num-workers``, in pods of ``nvidia.com/gpu`` / ``run.gpus_per_worker`` workers); the long-lived
    RayCluster and the launcher YAML can grow to the largest job their headers show."""
    from jobs.pretrain import build_parser, cli_overrides
    from siamim.config import load_config

    for doc in _manifests():
        if doc["kind"] != "RayJob" or "jobs/pretrain.py" not in doc["spec"]["entrypoint"]:
            continue
        args = build_parser().parse_args(shlex.split(doc["spec"]["entrypoint"])[2:])
        run = load_config(args.config, cli_overrides(args)).run
        (group,) = [g for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
        gpus = float(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        per_pod = gpus / run.gpus_per_worker
        low = run.min_workers if run.min_workers is not None else run.num_workers
        assert run.use_gpu and group["minReplicas"] * per_pod == low, (group, run)
        assert group["maxReplicas"] * per_pod == run.num_workers == group["replicas"] * per_pod, (group, run)
    (cluster,) = [d for d in _manifests() if d["kind"] == "RayCluster"]
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    launcher = (INFRA / "cluster.yaml").read_text()
    shown = max(int(n) for n in re.findall(r"--num-workers (\d+)", launcher))  # its header's example job
    assert yaml.safe_load(launcher)["available_node_types"]["gpu_worker"]["max_workers"] >= shown


def test_image_pip_set_equals_pyproject_pins():
    text = _dockerfile()
    project = _pyproject()["project"]
    ray_pin = next(d for d in project["dependencies"] if d.startswith("ray["))
    version = ray_pin.split("==")[1]
    assert f"rayproject/ray:{version}-py311" in text  # base image = the pinned Ray, Python 3.11
    installs = re.findall(r"pip install[^\n]*", text)
    assert len(installs) == 1 and " -e . " in installs[0] + " "  # pyproject's pinned set, nothing else but:
    extra = re.findall(r'"([^"]+)"', installs[0])
    test_pins = project["optional-dependencies"]["test"]
    assert all(e in test_pins for e in extra), (extra, test_pins)


def test_image_files_read_shards_from_s3(tmp_path):
    """Copy exactly what the Dockerfile COPYs, then read shards from a moto S3 server with that copy only."""
    import boto3

    from tests.helpers import free_port
    from tests.jobs.conftest import stop_tree, wait_http
    from tests.jobs.helpers import BIN

    image = tmp_path / "image"
    image.mkdir()
    for line in _dockerfile().splitlines():
        if line.startswith("COPY"):
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            for src in parts[:-1]:
                dest = image / src
                (shutil.copytree if (REPO / src).is_dir() else shutil.copy)(REPO / src, dest)
    assert (image / "jobs" / "prepare_data.py").is_file() and (image / "siamim" / "data" / "parquet.py").is_file()

    port = free_port()
    env = {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(image),  # stands in for the image's `pip install -e .` of the copied tree
        "HOME": str(tmp_path),
    }
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", 30, proc)
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="img")
        root = f"s3://img/ds?endpoint_override=127.0.0.1:{port}&scheme=http"
        script = f"""
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, io, json, siamim
assert siamim.__file__.startswith({str(image)!r}), siamim.__file__
from siamim.data.convert import convert_shard
from siamim.data.fs import write_bytes
from siamim.data.parquet import FORMAT, open_root, join
from siamim.data.sources import build_source
import siamim.data.convert as conv
conv._fashion_split.cache_clear()
conv.fashion_mnist.load_fashion_mnist = lambda root, split: (np.arange(4*28*28, dtype=np.uint8).reshape(4, 28, 28), np.arange(4))
r = convert_shard({{"kind": "fashion_mnist", "root": None, "out": {root!r}, "split": "train", "index": 0,
                    "first_id": 0, "items": [0, 1, 2, 3], "path": "train/part-00000.parquet", "row_group_rows": 2}})
fs, base = open_root({root!r})
manifest = {{"format": FORMAT, "classes": list("abcd"), "mean": [0.5]*3, "std": [0.5]*3, "content_hash": "0"*64,
            "splits": {{"train": {{"count": 4, "shards": [{{"path": r["path"], "rows": 4}}]}}}}}}
write_bytes(fs, join(fs, base, "manifest.json"), json.dumps(manifest).encode())
src = build_source("parquet", {root!r}, "train")
assert len(src) == 4 and src.labels.tolist() == [0, 1, 2, 3]
assert src.image(3)[0].flatten().tolist() == (np.arange(4*28*28, dtype=np.uint8).reshape(4, 28, 28)[3].flatten().tolist())
print("read", len(src), "images from S3")
"""
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert out.returncode == 0 and "read 4 images from S3" in out.stdout, out.stdout + out.stderr[-3000:]
    finally:
        stop_tree(proc)
