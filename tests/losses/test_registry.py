"""The plugin contract of ``siamim.losses`` (its ``__init__``): names(), get(), torch-free import."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import siamim.losses
from siamim.losses import compute_loss, get, names
from siamim.plugins import PluginFolder


def test_names_are_the_plugin_modules():
    files = Path(siamim.losses.__file__).parent.glob("*.py")
    assert names() == sorted(f.stem for f in files if not f.stem.startswith("_"))
    assert {"unigrad", "l2", "cosine"} <= set(names())  # the method's and the ablation's losses


@pytest.mark.parametrize("kind", names())
def test_every_plugin_has_the_loss_signature(kind):
    fn = get(kind)
    assert fn.__module__ == f"siamim.losses.{kind}"
    assert list(inspect.signature(fn).parameters) == ["pred", "target", "neg_weight"]
    out = fn(torch.randn(4, 3, 8), torch.randn(4, 3, 8), 0.02)
    assert out["loss"].shape == () and out["loss"].dtype == torch.float32


@pytest.mark.parametrize("kind", names())
def test_loss_is_fp32_under_cpu_bf16_autocast(kind):
    """Autocast would run the matmuls in bf16; the losses disable it, so the value equals the fp32 one."""
    gen = torch.Generator().manual_seed(2)
    p, z = torch.randn(256, 64, generator=gen), torch.randn(256, 64, generator=gen) * 3 + 1
    expected = compute_loss(kind, p, z, 0.02)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = compute_loss(kind, p, z, 0.02)["loss"]
        # The test can fail: under this autocast a plain matmul does drop to bf16.
        assert (z.T @ z).dtype == torch.bfloat16
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'huber'") as err:
        get("huber")
    assert str(names()) in str(err.value)
    with pytest.raises(ValueError, match="unigrad"):
        compute_loss("huber", torch.zeros(2, 4), torch.zeros(2, 4), 0.02)
    with pytest.raises(ValueError, match="unigrad"):
        get("_common")  # private helpers are not losses
    with pytest.raises(ValueError, match="differ"):
        get("unigrad")(torch.zeros(2, 4), torch.zeros(3, 4))


def test_names_without_importing_torch():
    """The config validates ``loss.type`` against names(); that must not import torch."""
    code = (
        "import sys, siamim.losses as L; n = L.names(); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert not any(m.startswith('siamim.losses.') for m in sys.modules), 'a plugin imported'; print(n)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(names())


def test_a_new_module_file_is_a_new_loss(tmp_path, monkeypatch):
    """Discovery is by file name: a module dropped next to the plugins becomes a valid name."""
    (tmp_path / "half_l2.py").write_text(
        "def half_l2_loss(pred, target, neg_weight=0.0):\n    return {'loss': ((pred - target) ** 2).mean() / 2}\n"
    )
    path = [*siamim.losses.__path__, str(tmp_path)]
    monkeypatch.setattr(siamim.losses, "__path__", path)  # where the import finds the module
    monkeypatch.setattr(siamim.losses, "_PLUGINS", PluginFolder("siamim.losses", path, "loss.type"))
    try:
        assert "half_l2" in names()
        assert float(compute_loss("half_l2", torch.ones(2), torch.zeros(2), 0.0)["loss"]) == 0.5
    finally:
        monkeypatch.undo()
        sys.modules.pop("siamim.losses.half_l2", None)
    assert "half_l2" not in names()
