import pytest

from siamim.config import ConfigError, flatten, from_dict, load_config, to_dict


def test_presets_load_and_round_trip():
    for preset in ("tiny", "vit_small", "vit_base"):
        cfg = load_config(preset)
        assert from_dict(to_dict(cfg)) == cfg


def test_dotted_overrides_are_typed():
    cfg = load_config("tiny", ["model.depth=6", "optim.blr=3e-4", "views.color_aug=false", "optim.betas=[0.8,0.9]",
                               "train.max_steps=null"])
    assert cfg.model.depth == 6 and cfg.optim.blr == 3e-4 and cfg.views.color_aug is False
    assert cfg.optim.betas == (0.8, 0.9) and cfg.train.max_steps is None
    assert flatten(cfg)["model.depth"] == 6


@pytest.mark.parametrize("override,match", [
    ("model.deptj=4", r"unknown config key 'model.deptj'; did you mean 'model.depth'\?"),
    ("modle.depth=4", r"unknown config key 'modle'.*'model'"),
    ("model.depth=four", r"model.depth='four' must be an integer"),
    ("mask.type=checker", r"mask.type='checker' is not one of"),
    ("mask.ratio=1.5", r"mask.ratio=1.5 is invalid"),
    ("model.patch_size=5", r"model.patch_size=5 is invalid: must divide data.img_size=28"),
    ("train.batch_size=255", r"train.batch_size=255 is invalid: must be divisible by run.num_workers=2"),
    ("loss.type=cosine", r"did you mean|is not one of"),
    ("model.depth", r"must look like section.key=value"),
])
def test_bad_keys_and_values_fail_with_a_named_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", [override])


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
