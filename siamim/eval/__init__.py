"""Evaluation protocols on frozen or fine-tuned encoders (docs/method.md, "Evaluation protocols").

Pure PyTorch + timm (no Ray, MLflow or boto3); ``jobs/evaluate.py`` drives them,
docs/evaluation.md defines them at Fashion-MNIST scale.

* :mod:`~siamim.eval.protocols` - the registry: one module per protocol (settings, run function,
  report columns); :mod:`~siamim.eval.settings` - ``cfg.eval`` built from it.
* :mod:`~siamim.eval.runner` - ``evaluate(rep, cfg, protocols)``: the registered protocols on one representation.
* The computations: :mod:`~siamim.eval.knn` - kNN (also the pretraining job's final metric);
  :mod:`~siamim.eval.linear_probe` - LIN (MAE); :mod:`~siamim.eval.fewshot` - 1% (MSN);
  :mod:`~siamim.eval.longtail` - long tail (LVIS); :mod:`~siamim.eval.dense` - mosaic segmentation
  (COCO/ADE20k); :mod:`~siamim.eval.finetune` - FT; :mod:`~siamim.eval.robustness` - corruptions (ImageNet-C).
* :mod:`~siamim.eval.feature_maps` - PCA maps, cross-view correspondence (the ``correspondence``
  protocol), cls attention; :mod:`~siamim.eval.pictures` - them drawn as PNG pictures.
* :mod:`~siamim.eval.representation`, :mod:`~siamim.eval.baselines` - checkpoint / pixels / random features.
* :mod:`~siamim.eval.imageset` - resized image sets; :mod:`~siamim.eval.subsets` - the seeded
  class-balanced subset rule; :mod:`~siamim.eval.report` - the table.
"""
