"""Robustness (counterpart of ImageNet-C): the LIN (and FT) classifiers on corrupted test images."""

from __future__ import annotations

from pydantic import Field

from siamim.eval.protocols import Headline, Protocol
from siamim.sections import Section

# The corruptions run and reported, one per ImageNet-C family: keys of siamim.eval.robustness.CORRUPTIONS.
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "elastic", "affine", "occlusion")


class RobustSettings(Section):
    test_limit: int | None = Field(2000, ge=10)  # test images per corruption x severity; None: the whole test set


def run(ctx, s: RobustSettings, progress) -> dict[str, float]:
    from siamim.eval import robustness
    from siamim.eval.subsets import limit_indices

    suite, e = ctx.suite, ctx.eval
    test = suite.test
    if s.test_limit is not None and s.test_limit < len(test):
        test = test.subset(limit_indices(test.labels.numpy(), s.test_limit, ctx.seed + 2))
    probe = ctx.shared.get("lin_probe")
    if probe is None:
        probe = ctx.lin_probe(ctx.features("train", "cls", progress), suite.train.labels, progress, "probe step")
        ctx.shared["lin_probe"] = probe
    probe, rep = probe.to(ctx.device), ctx.rep
    classifiers = {"robust": lambda x: probe(rep(x, "cls")).argmax(1)}
    if ctx.shared.get("ft_model") is not None:
        model = ctx.shared["ft_model"].eval()
        classifiers["robust_ft"] = lambda x: model(x).argmax(1)
    out = {}
    for prefix, classify in classifiers.items():

        def accuracy(name, severity, classify=classify):
            return robustness.corrupted_accuracy(classify, test, name, severity, ctx.seed, e.batch_size, ctx.device)

        out[f"{prefix}_clean_top1"] = accuracy(None, 1)
        table = {}
        done = progress(f"{prefix} corruptions", unit="corruption")
        for k, name in enumerate(CORRUPTIONS):
            table[name] = {sev: accuracy(name, sev) for sev in robustness.SEVERITIES}
            done(k + 1, len(CORRUPTIONS))
        for name, value in robustness.mean_corrupted_accuracy(table).items():
            out[f"{prefix}_{name.lower()}"] = value
    return out


PROTOCOL = Protocol(
    name="robust",
    order=70,  # after lin and ft: reuses their classifiers
    settings=RobustSettings,
    run=run,
    columns={
        "robust_clean_top1": ("IN-C (clean ref.)", "LIN classifier, clean top-1 %"),
        "robust_mca": ("IN-C 1-mCE", "LIN classifier, mean corrupted top-1 % (mCA)"),
        **{f"robust_{c}": ("-", f"LIN classifier, {c} top-1 % (mean of 5 severities)") for c in CORRUPTIONS},
        "robust_ft_clean_top1": ("IN-C (clean ref.)", "FT classifier, clean top-1 %"),
        "robust_ft_mca": ("IN-C 1-mCE", "FT classifier, mean corrupted top-1 % (mCA)"),
        **{f"robust_ft_{c}": ("-", f"FT classifier, {c} top-1 %") for c in CORRUPTIONS},
    },
    summary="LIN (and FT, when it ran) classifiers on 6 corruptions x 5 severities (ImageNet-C counterpart)",
    headline=Headline("robust_mca", "robust mCA", "FT"),
)
