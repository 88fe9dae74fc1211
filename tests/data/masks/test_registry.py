"""The plugin contract of ``siamim.data.masks`` (its ``__init__``): names(), get(), torch-free import."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import siamim.data.masks
from siamim.data.masks import get, make_mask, names


def test_names_are_the_plugin_modules():
    files = Path(siamim.data.masks.__file__).parent.glob("*.py")
    assert names() == sorted(f.stem for f in files if not f.stem.startswith("_"))
    assert {"blockwise", "random"} <= set(names())  # the method's and the ablation's masks


@pytest.mark.parametrize("kind", names())
def test_every_plugin_masks_the_exact_count(kind):
    fn = get(kind)
    assert fn.__module__ == f"siamim.data.masks.{kind}"
    assert list(inspect.signature(fn).parameters)[:4] == ["grid", "num_masked", "gen", "min_block"]
    gen = torch.Generator().manual_seed(0)
    for num in (1, 20, 63):
        mask = make_mask(kind, 8, num, gen, min_block=4)
        assert mask.shape == (64,) and mask.dtype == torch.bool and int(mask.sum()) == num


@pytest.mark.parametrize("kind", names())
def test_same_generator_same_mask(kind):
    a = make_mask(kind, 14, 118, torch.Generator().manual_seed(7))
    b = make_mask(kind, 14, 118, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_unknown_mask_type():
    with pytest.raises(ValueError, match="'checkerboard'") as err:
        make_mask("checkerboard", 8, 10, torch.Generator())
    assert str(names()) in str(err.value)


def test_names_without_importing_torch():
    """The config validates ``mask.type`` against names(); that must not import torch."""
    code = (
        "import sys, siamim.data.masks as M; n = M.names(); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(n)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(names())
