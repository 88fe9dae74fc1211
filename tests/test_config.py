import pytest

from siamim.config import ConfigError, flatten, from_dict, load_config, to_dict

ROWS = "abcdefghijk"


def test_presets_load_and_round_trip():
    for preset in ("tiny", "vit_small", "vit_base", "baselines/mae", *(f"ablation/{r}" for r in ROWS)):
        cfg = load_config(preset)
        assert from_dict(to_dict(cfg)) == cfg


def test_dotted_overrides_are_typed():
    cfg = load_config(
        "tiny",
        ["model.depth=6", "optim.blr=3e-4", "views.color_aug=false", "optim.betas=[0.8,0.9]", "train.max_steps=null"],
    )
    assert cfg.model.depth == 6 and cfg.optim.blr == 3e-4 and cfg.views.color_aug is False
    assert cfg.optim.betas == (0.8, 0.9) and cfg.train.max_steps is None
    assert flatten(cfg)["model.depth"] == 6


@pytest.mark.parametrize(
    "override,match",
    [
        ("model.deptj=4", r"unknown config key 'model.deptj'; did you mean 'model.depth'\?"),
        ("modle.depth=4", r"unknown config key 'modle'.*'model'"),
        ("model.depth=four", r"model.depth='four' must be an integer"),
        ("mask.type=checker", r"mask.type='checker' is not one of"),
        ("mask.ratio=1.5", r"mask.ratio=1.5 is invalid"),
        ("model.patch_size=5", r"model.patch_size=5 is invalid: must divide data.img_size=28"),
        ("train.batch_size=255", r"train.batch_size=255 is invalid: must be divisible by run.num_workers=2"),
        (
            "run.num_workers=4 run.min_workers=2 train.batch_size=256",
            r"train.batch_size=256 is invalid: .*3 of run.min_workers..run.num_workers = 2..4 do not divide it",
        ),
        ("run.min_workers=3", r"run.min_workers=3 is invalid: must be <= run.num_workers=2"),
        ("loss.type=cosin", r"did you mean .cosine."),
        ("model.target=pixel model.heads=moco_like", r"model.target='pixel' is invalid: .*model.heads=mae_like"),
        ("loss.scope=global", r"loss.scope='global' is invalid: .*model.heads=moco_like"),
        ("loss.scope=global model.target=pixel", r"loss.scope='global' is invalid: .*model.target=feature"),
        ("model.depth", r"must look like section.key=value"),
    ],
)
def test_bad_keys_and_values_fail_with_a_named_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", override.split(" "))


def test_unknown_preset_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        load_config("tinny")


def test_missing_dataset_error_says_how_to_get_it(tmp_path):
    from siamim.data.fashion_mnist import DatasetNotFoundError, load_fashion_mnist

    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")
    (tmp_path / "fm").mkdir()
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path / "fm")


def test_stored_config_with_a_removed_key_still_loads():
    data = to_dict(load_config("tiny"))
    data["eval"]["lin_epochs"] = 90  # a key an older version had
    with pytest.warns(UserWarning, match="eval.lin_epochs"):
        cfg = from_dict(data)
    assert cfg == load_config("tiny")
    data["model"]["depth"] = "deep"
    with pytest.raises(ConfigError, match="model.depth"):
        from_dict(data)


def test_base_inheritance_merges_sections_key_by_key(tmp_path):
    (tmp_path / "parent.yaml").write_text("_base_: tiny\nmodel:\n  depth: 7\ntrain:\n  epochs: 3\n")
    (tmp_path / "child.yaml").write_text("_base_: parent.yaml\nmodel:\n  norm: ln\n")
    cfg = load_config(tmp_path / "child.yaml")
    tiny = load_config("tiny")
    assert (cfg.model.norm, cfg.model.depth, cfg.train.epochs) == ("ln", 7, 3.0)  # child, parent, parent
    assert cfg.model.embed_dim == tiny.model.embed_dim and cfg.data == tiny.data  # untouched keys from tiny
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(tmp_path / "loop.yaml")


def test_ablation_rows_differ_from_row_i_only_in_their_switches():
    switches = {
        "model.target",
        "model.heads",
        "model.norm",
        "views.different_views",
        "views.color_aug",
        "mask.type",
        "loss.scope",
        "loss.type",
        "train.output_dir",
    }
    row_i = flatten(load_config("ablation/i"))
    assert {k for k, v in flatten(load_config("tiny")).items() if row_i[k] != v} <= {
        "run.experiment",
        "train.output_dir",
    }
    for row in ROWS:
        flat = flatten(load_config(f"ablation/{row}"))
        assert {k for k, v in flat.items() if row_i[k] != v} <= switches, row
