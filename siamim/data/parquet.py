"""Images as Parquet shards on a local disk or object storage (``data.dataset=parquet``).

Layout under ``data.root`` (a directory or ``s3://bucket/prefix``; written by
``jobs/prepare_data.py``)::

    <root>/train/part-00000.parquet ...   columns: id int64, label int64, image binary (PNG/JPEG bytes)
    <root>/test/part-00000.parquet ...
    <root>/manifest.json                  written last: counts, shards, classes, mean/std, content hash

A root without ``manifest.json`` is not a dataset (a conversion that did not
finish never looks like one). ``id`` is the image's stable index in its split
(0..N-1, the source's order), so the per-sample seeds of the training pipeline
(``sample_seed(seed, epoch, id)``) and hence every view and mask are the same
whether the images come from the original files or from the shards.

S3 endpoints come from the URI's query (``?endpoint_override=HOST:PORT&scheme=http``)
or ``AWS_ENDPOINT_URL``; credentials only from the standard AWS environment/config,
never from the URI (a URI with ``user:secret@`` is refused, so they cannot leak
into configs, MLflow params or logs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from siamim.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "siamim-parquet/1"
SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("image", pa.binary())])
COLUMNS = ["id", "label", "image"]
S3_TIMEOUT_S = 10.0  # connect and request timeouts: an unreachable endpoint fails in seconds


class ParquetDataError(UserError, RuntimeError):
    """The shards cannot be used; the message names the location and the fix."""


# --------------------------------------------------------------------------- locations
def is_remote(root: str) -> bool:
    return "://" in str(root) and not str(root).startswith("file://")


def endpoint_of(root: str) -> str:
    """The endpoint a root talks to, for messages (never credentials)."""
    if not is_remote(root):
        return "local disk"
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(str(root)).query))
    if "endpoint_override" in query:
        return f"{query.get('scheme', 'https')}://{query['endpoint_override']}"
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3 (default endpoint)"


def display(root: str) -> str:
    """``root`` without its query string (what messages and logs show)."""
    return str(root).split("?", 1)[0]


def open_root(root: str, timeout_s: float = S3_TIMEOUT_S) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local directory or an ``s3://bucket/prefix[?query]`` URI."""
    text = str(root).strip()
    if not is_remote(text):
        local = text.removeprefix("file://")
        return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "s3":
        raise ParquetDataError(f"data.root={display(text)!r}: only local paths and s3:// URIs are supported")
    if "@" in parts.netloc:
        raise ParquetDataError(
            "data.root must not carry credentials (user:secret@); export AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or use an AWS profile instead"
        )
    query = dict(urllib.parse.parse_qsl(parts.query))
    unknown = set(query) - {"endpoint_override", "scheme", "region"}
    if unknown:
        raise ParquetDataError(
            f"data.root={display(text)!r}: unknown query parameter(s) {sorted(unknown)}; "
            "allowed: endpoint_override, scheme, region"
        )
    kwargs = {
        "connect_timeout": timeout_s,
        "request_timeout": timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    endpoint = query.get("endpoint_override")
    scheme = query.get("scheme")
    env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint is None and env_endpoint:
        env = urllib.parse.urlsplit(env_endpoint)
        endpoint, scheme = env.netloc or env.path, scheme or env.scheme or "https"
    if endpoint is not None:
        kwargs["endpoint_override"] = endpoint
    if scheme is not None:
        kwargs["scheme"] = scheme
    kwargs["region"] = (
        query.get("region") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    )
    fs = pafs.S3FileSystem(**kwargs)
    return fs, (parts.netloc + parts.path).rstrip("/")


def join(fs: pafs.FileSystem, base: str, *parts: str) -> str:
    """``base/parts`` inside ``fs`` (POSIX paths, local disk and object stores alike)."""
    return posixpath.join(base, *parts)


def read_manifest(root: str) -> dict:
    """The manifest of a prepared root; :class:`ParquetDataError` (naming the endpoint) if absent or unreachable."""
    fs, base = open_root(root)
    path = join(fs, base, MANIFEST)
    try:
        with fs.open_input_stream(path) as f:
            manifest = json.loads(f.read().decode())
    except FileNotFoundError:
        raise ParquetDataError(
            f"data.root={display(root)!r} has no {MANIFEST}: not a prepared dataset, or its "
            "conversion did not finish. Run `python jobs/prepare_data.py --out <root> ...`"
        ) from None
    except OSError as err:
        raise ParquetDataError(
            f"data.root={display(root)!r}: cannot read {MANIFEST} from {endpoint_of(root)} "
            f"({str(err).splitlines()[0][:300]}); check the endpoint, the bucket and the AWS_* "
            "credentials"
        ) from err
    if manifest.get("format") != FORMAT:
        raise ParquetDataError(f"{display(root)}/{MANIFEST} has format {manifest.get('format')!r}; expected {FORMAT!r}")
    return manifest


def shard_paths(root: str, manifest: dict, split: str) -> list[str]:
    """Paths (inside the root's filesystem) of one split's shards, in id order."""
    if split not in manifest["splits"]:
        raise ParquetDataError(f"{display(root)} has no {split!r} split (has {sorted(manifest['splits'])})")
    fs, base = open_root(root)
    return [join(fs, base, s["path"]) for s in manifest["splits"][split]["shards"]]


# --------------------------------------------------------------------------- image codec
def encode_png(image: np.ndarray) -> bytes:
    """uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) -> PNG bytes (lossless)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    """Encoded image -> uint8 ``[H, W, 3]`` (grey replicated, as the original sources do)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.mode == "L":
            arr = np.asarray(img)
            return np.repeat(arr[:, :, None], 3, axis=2)
        return np.asarray(img.convert("RGB"))


def decode_image(data: bytes) -> torch.Tensor:
    """Encoded image -> uint8 ``[3, H, W]``."""
    return torch.from_numpy(np.ascontiguousarray(decode_array(data).transpose(2, 0, 1)))


def row_digest(ids, labels, images) -> str:
    """Order-independent-per-shard digest input: sha256 over (id, label, sha256(bytes)) rows."""
    h = hashlib.sha256()
    for i, y, img in zip(ids, labels, images, strict=True):
        h.update(f"{int(i)}:{int(y)}:{hashlib.sha256(img).hexdigest()};".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- map-style source
class ParquetSource:
    """One split of a prepared root as an :class:`~siamim.data.sources.ImageSource` (map-style).

    Opening reads only the manifest. Labels are read on first use (one column);
    the encoded image bytes on the first ``image()`` call, all shards once, into
    memory (or from ``cache_dir``, where remote shards are copied once, keyed by
    the manifest's content hash). Images are decoded per call.
    """

    def __init__(self, root: str, split: str, cache_dir: str | None = None, indices: np.ndarray | None = None):
        self.root = str(root)
        self.split = split
        self.cache_dir = cache_dir
        self.manifest = read_manifest(self.root)
        info = self.manifest["splits"].get(split)
        if info is None:
            raise ParquetDataError(f"{display(root)} has no {split!r} split (has {sorted(self.manifest['splits'])})")
        self.count = int(info["count"])
        self.classes = tuple(self.manifest["classes"])
        self.mean = tuple(self.manifest["mean"])
        self.std = tuple(self.manifest["std"])
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self._labels: np.ndarray | None = None
        self._images: list | None = None

    def __len__(self) -> int:
        return self.count if self.indices is None else len(self.indices)

    def _table(self, columns: list[str]) -> pa.Table:
        paths = shard_paths(self.root, self.manifest, self.split)
        fs, _ = open_root(self.root)
        if self.cache_dir and is_remote(self.root) and "image" in columns:
            fs, paths = self._cached(fs, paths)
        tables = [pq.read_table(p, columns=["id", *columns], filesystem=fs) for p in paths]
        table = pa.concat_tables(tables)
        ids = table.column("id").to_numpy()
        if not np.array_equal(ids, np.arange(self.count)):
            raise ParquetDataError(
                f"{display(self.root)}/{self.split}: ids are not 0..{self.count - 1} in shard order "
                "(damaged or mixed conversion); prepare the data again"
            )
        return table

    def _cached(self, fs, paths: list[str]):
        """Copy remote shards to ``<cache_dir>/<content hash>/`` once; later opens read the local copies."""
        local_dir = Path(self.cache_dir, self.manifest["content_hash"][:16], self.split)
        local_dir.mkdir(parents=True, exist_ok=True)
        local = []
        for p in paths:
            dest = local_dir / posixpath.basename(p)
            if not dest.is_file():
                tmp = dest.with_suffix(f".tmp-{os.getpid()}")
                with fs.open_input_stream(p) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.replace(tmp, dest)
            local.append(str(dest))
        return pafs.LocalFileSystem(), local

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = self._table(["label"]).column("label").to_numpy().astype(np.int64)
        return self._labels if self.indices is None else self._labels[self.indices]

    def load(self) -> ParquetSource:
        """Read every shard's image bytes now (otherwise on the first ``image()``)."""
        if self._images is None:
            table = self._table(["label", "image"])
            self._labels = table.column("label").to_numpy().astype(np.int64)
            self._images = table.column("image").to_pylist()
        return self

    def encoded(self, index: int) -> bytes:
        self.load()
        return self._images[int(index) if self.indices is None else int(self.indices[index])]

    def image(self, index: int) -> torch.Tensor:
        """uint8 ``[3, H, W]``."""
        return decode_image(self.encoded(index))

    def subset(self, indices) -> ParquetSource:
        idx = np.asarray(indices, dtype=np.int64)
        sub = ParquetSource.__new__(ParquetSource)
        sub.__dict__.update(self.__dict__)
        sub.indices = idx if self.indices is None else self.indices[idx]
        return sub
