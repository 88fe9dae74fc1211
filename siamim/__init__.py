"""siamim: Siamese Image Modeling (SiameseIM, CVPR 2023) in PyTorch + timm.

The core package (everything except :mod:`siamim.orchestration`) imports no
Ray, MLflow or boto3, so the method and its training loop run anywhere torch
runs: a laptop, ``torchrun``, a bare GPU box or a Ray Train worker.
"""

__version__ = "0.1.0"
