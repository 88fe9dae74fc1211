from siamim.data.pipeline import build_loader
from siamim.data.sources import build_source


def one_batch(cfg):
    """The first training batch of ``cfg`` on the real Fashion-MNIST."""
    return next(iter(build_loader(build_source("fashion_mnist", None, "train"), cfg, 0, 1, 0, 1)))
