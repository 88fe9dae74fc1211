"""The correspondence protocol (one module plus this test) from the registry, on real Fashion-MNIST pairs."""

from siamim.eval.baselines import baseline_representation
from siamim.eval.runner import Suite, evaluate
from tests.eval.helpers import cfg


def test_correspondence_runs_from_the_registry_with_its_chance_level():
    c = cfg("eval.test_limit=100", "eval.correspondence.pairs=64", "eval.device=cpu")
    suite = Suite(c, log=None)
    got = {}
    for name in ("pixels", "random"):
        (res,) = evaluate(baseline_representation(name, c, seed=0), c, "correspondence", suite, log=lambda m: None)
        got[name] = res.metrics
    for m in got.values():
        assert 0.0 <= m["correspondence"] <= 100.0 and 0.0 < m["correspondence_chance"] < 15.0
        assert m["correspondence_queries"] > 64 * 10
    # same pairs for every representation: the same counted queries and chance level
    for key in ("correspondence_chance", "correspondence_same_position", "correspondence_queries"):
        assert got["pixels"][key] == got["random"][key], key
    assert got["pixels"]["correspondence_same_position"] > got["pixels"]["correspondence_chance"]
    # raw pixels of a patch match their own content far above chance on real images (colour jitter aside)
    assert got["pixels"]["correspondence"] > 2 * got["pixels"]["correspondence_chance"], got


def test_correspondence_is_a_column_of_the_ablation_table():
    from siamim.orchestration.ablation import table as tbl

    results = [
        {"row": "i", "seed": 0, "eval.correspondence": 40.0},
        {"row": "i", "seed": 1, "eval.correspondence": 44.0},
        {"row": "k", "seed": 0, "eval.correspondence": 20.0},
    ]
    table = tbl.assemble(results, ["correspondence"])
    md = tbl.to_markdown(table, ["correspondence"])
    assert "correspondence" in md.splitlines()[0] and "| i | 2 | 42.00 ± 2.83 |" in md
