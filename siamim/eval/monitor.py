"""The online kNN monitor: a quality signal during pretraining (``eval.monitor_every``), not only at its end.

Every ``eval.monitor_every`` steps rank 0 computes kNN top-1 (``eval.knn``'s k and temperature)
of the current online encoder's cls features on a small fixed subset: a class-balanced,
seeded memory bank of ``eval.monitor_bank`` training images and ``eval.monitor_queries``
test images (``eval.seed``), resized once and kept in memory, extracted in batched passes
with no gradient. The value is reported as the metric ``knn_monitor`` of that step (MLflow,
Tune, TensorBoard), so a scheduler can stop a bad run early. Beside it, ``rankme_monitor`` is
the effective rank of the memory bank's cls features (RankMe, Garrido et al., ICML 2023): a
signal that needs no labels, so it is what a user without a labelled subset can watch. The
monitor uses no random numbers, so the training it watches is the same with it on or off.
"""

from __future__ import annotations

import time

import torch

from siamim.data.sources import build_source
from siamim.eval.imageset import load_image_set
from siamim.eval.knn import knn_accuracy
from siamim.eval.representation import EncoderRepresentation, extract
from siamim.eval.subsets import limit_indices

METRIC = "knn_monitor"
RANK_METRIC = "rankme_monitor"


def effective_rank(features: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe of ``features`` [N, D]: exp of the entropy of its singular values normalised to sum 1.

    Between 1 (all rows on one line) and min(N, D) (all singular values equal). No centring,
    as in the paper that defines it.
    """
    sigma = torch.linalg.svdvals(features.double())
    p = sigma / sigma.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


class KnnMonitor:
    """kNN top-1 (%) and RankMe of an encoder on the fixed monitor subsets of ``cfg`` (built once, in memory)."""

    def __init__(self, cfg, device: torch.device | str = "cpu"):
        self.cfg, self.device = cfg, device
        e = cfg.eval
        self.sets = {}
        for split, limit, seed in (("train", e.monitor_bank, e.seed), ("test", e.monitor_queries, e.seed + 1)):
            source = build_source(cfg.data.dataset, cfg.data.root, split)
            rows = limit_indices(source.labels, limit, seed)
            self.sets[split] = load_image_set(source, cfg.data.img_size, rows)
        self.seconds = 0.0  # time spent in the monitor so far (its cost, for the run's metrics)

    def __call__(self, encoder: torch.nn.Module) -> dict[str, float]:
        """``{knn_monitor: kNN top-1 %, rankme_monitor: effective rank}`` of ``encoder`` (a timm ViT; left in
        the train/eval mode it was in)."""
        return self.measure(EncoderRepresentation(encoder))

    def measure(self, rep) -> dict[str, float]:
        """The monitor's two values for any representation (an encoder's, or the raw-pixel baseline's)."""
        start = time.perf_counter()
        bank, queries = (
            extract(rep, self.sets[s], "cls", self.cfg.eval.batch_size, self.device) for s in ("train", "test")
        )
        k = self.cfg.eval.knn
        train = self.sets["train"]
        top1 = knn_accuracy(
            bank, train.labels, queries, self.sets["test"].labels, train.num_classes, k.k, k.temperature
        )
        rank = effective_rank(bank)
        self.seconds += time.perf_counter() - start
        return {METRIC: top1, RANK_METRIC: rank}
