"""Run the evaluation protocols on one representation, sharing data and cached features.

``evaluate(rep, cfg, protocols)`` runs each protocol in :data:`PROTOCOLS`
order and returns one :class:`ProtocolResult` per protocol (metrics in
percent, wall time in seconds). A :class:`Suite` holds the image sets of one
config; pass the same suite to several ``evaluate`` calls (a checkpoint and
its baselines) so the data is prepared once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from siamim.data.sources import build_source
from siamim.eval import dense, fewshot, finetune, longtail, robustness
from siamim.eval.imageset import ImageSet, load_image_set
from siamim.eval.knn import knn_accuracy
from siamim.eval.linear_probe import accuracy, per_class_accuracy, predict, train_linear_probe
from siamim.eval.representation import extract, extract_many
from siamim.eval.settings import PROTOCOLS, check_eval_config, parse_protocols

Log = Callable[[str], None]


@dataclass
class ProtocolResult:
    protocol: str
    metrics: dict[str, float]
    wall_s: float
    notes: dict[str, str] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU raises."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("eval.device=cuda but no CUDA device is visible; use eval.device=auto or cpu")
    return torch.device(name)


def limit_indices(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """All indices, or a seeded class-balanced subset of about ``limit`` of them (sorted int64)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    return fewshot.class_balanced_subset(labels, limit / len(labels), seed)


class Progress:
    """Throttled progress lines: ``[protocol] what done/total``, at most every ``every`` seconds."""

    def __init__(self, log: Log, protocol: str, every: float = 10.0):
        self.log, self.protocol, self.every, self.last = log, protocol, every, 0.0

    def __call__(self, what: str) -> Callable:
        from siamim.train.progress import format_seconds

        start = time.monotonic()

        def report(done, total, *extra):
            now = time.monotonic()
            if done == total or now - self.last >= self.every:
                self.last = now
                tail = f" loss {extra[0]:.4f}" if extra else ""
                eta = f" ETA {format_seconds((now - start) / done * (total - done))}" if 0 < done < total else ""
                self.log(f"[{self.protocol}] {what} {done}/{total}{tail}{eta}")

        return report


class Suite:
    """The train/test image sets of ``cfg`` (limits applied), built once and shared by representations."""

    def __init__(self, cfg, log: Log = print):
        check_eval_config(cfg.eval)
        self.cfg, self.log = cfg, log
        self.device = resolve_device(cfg.eval.device)
        d, e = cfg.data, cfg.eval
        self.train_source = build_source(d.dataset, d.root, "train")
        self.test_source = build_source(d.dataset, d.root, "test")
        self.train_idx = limit_indices(self.train_source.labels, e.train_limit, e.seed)
        self.test_idx = limit_indices(self.test_source.labels, e.test_limit, e.seed + 1)
        self._sets: dict[str, object] = {}

    def get(self, key: str, build: Callable):
        if key not in self._sets:
            self._sets[key] = build()
        return self._sets[key]

    @property
    def train(self) -> ImageSet:
        return self.get("train", lambda: load_image_set(self.train_source, self.cfg.data.img_size, self.train_idx))

    @property
    def test(self) -> ImageSet:
        return self.get("test", lambda: load_image_set(self.test_source, self.cfg.data.img_size, self.test_idx))


class _Run:
    """State of one representation's evaluation: cached features, the LIN probe, the FT model."""

    def __init__(self, rep, suite: Suite, log: Log):
        self.rep, self.suite, self.log = rep, suite, log
        self.cfg, self.e, self.dev = suite.cfg, suite.cfg.eval, suite.device
        self.feats: dict[tuple[str, str], torch.Tensor] = {}
        self.lin_probe = None
        self.ft_model = None
        rep.to(self.dev)
        if getattr(rep, "encoder", None) is not None:
            rep.encoder.eval()  # frozen protocols; FT trains its own copy

    def features(self, split: str, pool: str, progress: Progress) -> torch.Tensor:
        if (split, pool) not in self.feats:
            images = getattr(self.suite, split)
            pools = ("cls", "mean") if pool in ("cls", "mean") else (pool,)  # one forward pass for both
            feats = extract_many(
                self.rep,
                images,
                pools,
                self.e.batch_size,
                self.dev,
                progress=progress(f"{split} {'+'.join(pools)} features"),
            )
            for name, value in feats.items():
                self.feats[split, name] = value
        return self.feats[split, pool]

    def _lin(self, feats, labels, progress, what):
        e = self.e
        return train_linear_probe(
            feats,
            labels,
            self.suite.train.num_classes,
            e.lin_steps,
            e.lin_batch_size,
            e.lin_blr,
            e.lin_warmup_steps,
            e.seed,
            self.dev,
            progress(what),
        )

    # ------------------------------------------------------------------ protocols
    def knn(self, p: Progress) -> dict:
        e, s = self.e, self.suite
        bank, labels = self.features("train", "cls", p), s.train.labels
        if e.knn_train_subset is not None and e.knn_train_subset < len(bank):
            keep = torch.from_numpy(limit_indices(labels.numpy(), e.knn_train_subset, e.seed))
            bank, labels = bank[keep], labels[keep]
        acc = knn_accuracy(
            bank, labels, self.features("test", "cls", p), s.test.labels, s.test.num_classes, e.knn_k, e.knn_temperature
        )
        return {"knn_top1": acc}

    def lin(self, p: Progress) -> dict:
        s, out = self.suite, {}
        for pool, key in (("cls", "lin_top1"), ("mean", "lin_mean_top1")):
            probe = self._lin(self.features("train", pool, p), s.train.labels, p, f"probe ({pool}) step")
            out[key] = accuracy(predict(probe, self.features("test", pool, p), device=self.dev), s.test.labels)
            if pool == "cls":
                self.lin_probe = probe
        return out

    def fewshot(self, p: Progress) -> dict:
        e, s = self.e, self.suite
        labels = s.train_source.labels
        subsets = [
            fewshot.class_balanced_subset(labels, e.fewshot_fraction, e.seed + k) for k in range(e.fewshot_seeds)
        ]
        union = np.unique(np.concatenate(subsets))
        images = load_image_set(s.train_source, self.cfg.data.img_size, union)
        feats = extract(self.rep, images, "cls", e.batch_size, self.dev, progress=p("labelled-subset features"))
        test = self.features("test", "cls", p)
        accs = []
        for k, sub in enumerate(subsets):
            rows = torch.from_numpy(np.searchsorted(union, sub))
            accs.append(
                fewshot.fewshot_accuracy(
                    feats[rows], images.labels[rows], test, s.test.labels, s.test.num_classes, e.fewshot_lambd
                )
            )
            p("seeds")(k + 1, len(subsets))
        stats = fewshot.summarize(accs)
        return {
            "fewshot_top1": stats["mean"],
            "fewshot_top1_std": stats["std"],
            "fewshot_per_class": float(len(subsets[0]) / s.test.num_classes),
        }

    def longtail(self, p: Progress) -> dict:
        e, s = self.e, self.suite
        idx, order = longtail.longtail_subset(s.train.labels.numpy(), e.longtail_imbalance, e.seed, s.train.num_classes)
        keep = torch.from_numpy(idx)
        probe = self._lin(self.features("train", "cls", p)[keep], s.train.labels[keep], p, "long-tail probe step")
        pred = predict(probe, self.features("test", "cls", p), device=self.dev)
        per_class = per_class_accuracy(pred, s.test.labels, s.test.num_classes)
        rare = torch.from_numpy(order[-e.longtail_rare :])
        return {
            "longtail_top1": accuracy(pred, s.test.labels),
            "longtail_rare_top1": float(per_class[rare].nanmean()),
            "longtail_train_size": float(len(idx)),
        }

    def dense(self, p: Progress) -> dict:
        e, s, size = self.e, self.suite, self.cfg.data.img_size
        tr = s.get(
            "mosaic_train",
            lambda: dense.build_mosaics(s.train_source, e.dense_train_mosaics, size, e.seed, s.train_idx),
        )
        te = s.get(
            "mosaic_test",
            lambda: dense.build_mosaics(s.test_source, e.dense_test_mosaics, size, e.seed + 1, s.test_idx),
        )
        x_tr = extract(self.rep, tr.images, "tokens", e.batch_size, self.dev, progress=p("train mosaic tokens"))
        x_te = extract(self.rep, te.images, "tokens", e.batch_size, self.dev, progress=p("test mosaic tokens"))
        probe = dense.train_dense_probe(
            x_tr,
            tr.masks,
            tr.num_labels,
            e.dense_epochs,
            blr=e.dense_blr,
            seed=e.seed,
            device=self.dev,
            progress=p("dense probe step"),
        )
        pred = dense.segment(probe, x_te, device=self.dev)
        m, _ = dense.miou(dense.confusion(pred, te.masks, te.num_labels))
        return {"dense_miou": m, "dense_pixel_acc": 100.0 * (pred == te.masks).float().mean().item()}

    def ft(self, p: Progress) -> dict:
        e, s = self.e, self.suite
        settings = finetune.FinetuneSettings.from_eval(e)
        res = finetune.finetune(self.rep, s.train, s.test, settings, self.dev, progress=p("epoch"))
        self.ft_model = res.model
        return {"ft_top1": res.accuracy, "ft_steps": float(res.steps)}

    def robust(self, p: Progress) -> dict:
        e, s = self.e, self.suite
        test = s.test
        if e.robust_test_limit is not None and e.robust_test_limit < len(test):
            test = test.subset(limit_indices(test.labels.numpy(), e.robust_test_limit, e.seed + 2))
        if self.lin_probe is None:
            self.lin_probe = self._lin(self.features("train", "cls", p), s.train.labels, p, "probe (cls) step")
        probe, rep = self.lin_probe.to(self.dev), self.rep
        classifiers = {"robust": lambda x: probe(rep(x, "cls")).argmax(1)}
        if self.ft_model is not None:
            model = self.ft_model.eval()
            classifiers["robust_ft"] = lambda x: model(x).argmax(1)
        out = {}
        for prefix, fn in classifiers.items():

            def run(name, sev, fn=fn):
                return robustness.corrupted_accuracy(fn, test, name, sev, e.seed, e.batch_size, self.dev)

            out[f"{prefix}_clean_top1"] = run(None, 1)
            table = {}
            for k, name in enumerate(robustness.CORRUPTIONS):
                table[name] = {sev: run(name, sev) for sev in robustness.SEVERITIES}
                p(f"{prefix} corruptions")(k + 1, len(robustness.CORRUPTIONS))
            for name, value in robustness.summarize(table).items():
                out[f"{prefix}_{name if name != 'mCA' else 'mca'}"] = value
        return out


def evaluate(rep, cfg, protocols, suite: Suite | None = None, log: Log = print) -> list[ProtocolResult]:
    """Run ``protocols`` (names or ``"knn,lin,..."``) on ``rep`` with ``cfg.eval`` settings.

    Args:
        rep: an :class:`~siamim.eval.representation.EncoderRepresentation` or
            :class:`~siamim.eval.representation.PixelRepresentation`.
        suite: shared data (built from ``cfg`` when ``None``).
    Returns:
        one :class:`ProtocolResult` per protocol, in :data:`PROTOCOLS` order.
    """
    names = parse_protocols(protocols)
    suite = suite or Suite(cfg, log)
    run = _Run(rep, suite, log)
    results = []
    for name in names:
        log(f"[{name}] start ({rep.name}, device {suite.device})")
        t0 = time.perf_counter()
        metrics = getattr(run, name)(Progress(log, name))
        wall = time.perf_counter() - t0
        log(f"[{name}] done in {wall:.1f}s: " + ", ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
        results.append(ProtocolResult(name, metrics, wall))
    return results


__all__ = ["PROTOCOLS", "ProtocolResult", "Suite", "evaluate", "limit_indices", "resolve_device"]
