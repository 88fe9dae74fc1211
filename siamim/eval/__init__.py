"""Evaluation protocols on frozen or fine-tuned encoders (docs/method.md, "Evaluation protocols").

Pure PyTorch + timm (no Ray, MLflow or boto3); ``jobs/evaluate.py`` drives them,
docs/evaluation.md defines them at Fashion-MNIST scale.

* :mod:`~siamim.eval.runner` - ``evaluate(rep, cfg, protocols)``: every protocol on one representation.
* :mod:`~siamim.eval.knn` - kNN; :mod:`~siamim.eval.linear_probe` - LIN (MAE);
  :mod:`~siamim.eval.fewshot` - 1% (MSN); :mod:`~siamim.eval.longtail` - long tail (LVIS);
  :mod:`~siamim.eval.dense` - mosaic segmentation (COCO/ADE20k); :mod:`~siamim.eval.finetune` - FT;
  :mod:`~siamim.eval.robustness` - corruptions (ImageNet-C).
* :mod:`~siamim.eval.representation`, :mod:`~siamim.eval.baselines` - checkpoint / pixels / random features.
* :mod:`~siamim.eval.imageset` - resized in-memory image sets; :mod:`~siamim.eval.report` - the table.
"""
