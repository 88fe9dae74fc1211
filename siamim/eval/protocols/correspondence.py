"""Cross-view correspondence: the fraction of view-2 patches whose most similar view-1 patch is within one
patch of where the geometry puts them (the spatial sensitivity the paper claims; no paper column).

``eval.correspondence.pairs`` test images (class-free seeded draw, ``default_rng(eval.seed + 3)``) each
give one augmented pair with the training crops and flips (``views.flip_prob``; crop scale
``[eval.correspondence.crop_min, 1]`` so that most pairs overlap; colour augmentation per
``eval.correspondence.color_aug``). Patch features (``tokens``) of both views; each view-2 patch
whose true centre lies inside view 1 is matched to the view-1 patch of highest cosine similarity and
counts as matched when that patch's centre is within one patch (Euclidean) of the true centre
(:mod:`siamim.eval.feature_maps`). ``correspondence_chance`` is what a uniformly random choice scores
on the same queries, ``correspondence_same_position`` what the feature-free guess "the same grid
position" scores (where a purely positional feature lands).
"""

from __future__ import annotations

from pydantic import Field

from siamim.eval.protocols import Headline, Protocol
from siamim.sections import Section


class CorrespondenceSettings(Section):
    pairs: int = Field(512, ge=1)  # augmented pairs (one per drawn test image)
    crop_min: float = Field(0.35, gt=0.0, le=1.0)  # crop scale [crop_min, 1] of both views
    color_aug: bool = True  # the training colour pipelines on the two views


def run(ctx, s: CorrespondenceSettings, progress) -> dict[str, float]:
    from siamim.eval.feature_maps import correspondence, correspondence_score, same_position_score
    from siamim.eval.pictures import normalise, patch_tokens, picture_indices, view_pairs

    cfg, source = ctx.cfg, ctx.suite.test_source
    indices = picture_indices(len(source), s.pairs, ctx.seed + 3)
    v1, v2, geometry = view_pairs(
        source, indices, cfg.data.img_size, ctx.seed + 3, s.crop_min, cfg.views.flip_prob, s.color_aug
    )
    report = progress("view pairs", unit="pair")
    f1 = patch_tokens(ctx.rep, normalise(v1, source.mean, source.std), ctx.eval.batch_size)  # [P, L, D]
    f2 = patch_tokens(ctx.rep, normalise(v2, source.mean, source.std), ctx.eval.batch_size)
    report(len(indices), len(indices))
    result = correspondence(f1, f2, geometry, cfg.grid_size)
    score, chance, counted = correspondence_score(result)
    return {
        "correspondence": 100.0 * score,
        "correspondence_chance": 100.0 * chance,
        "correspondence_same_position": 100.0 * same_position_score(result),
        "correspondence_queries": counted,
    }


PROTOCOL = Protocol(
    name="correspondence",
    order=55,
    settings=CorrespondenceSettings,
    run=run,
    columns={
        "correspondence": ("- (spatial sensitivity)", "view-2 patches matched within 1 patch of the geometry, %"),
        "correspondence_chance": ("-", "same, a uniformly random match (chance level), %"),
        "correspondence_same_position": ("-", "same, view-1 patch (r, c) for view-2 patch (r, c): no features, %"),
        "correspondence_queries": ("-", "view-2 patches inside view 1 (counted queries)"),
    },
    summary="cross-view patch correspondence vs the true geometry (fraction within one patch)",
    headline=Headline("correspondence", "correspondence", "AP box"),  # spatial sensitivity
)
