"""siamim/timm_export.py: the encoder as timm's save_for_hf folder, loadable by timm alone."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from siamim.checkpoint import ENCODER_PREFIX, FORMAT_VERSION, load_encoder, save_encoder
from siamim.config import to_dict
from siamim.data import fashion_mnist
from siamim.foreign import read_checkpoint
from siamim.model.encoder import build_encoder
from siamim.timm_export import TIMM_CONFIG, TIMM_WEIGHTS, is_timm_export, load_timm_export, save_timm_encoder
from tests.eval.helpers import cfg


def _training_state(step: int = 5) -> dict:
    c = cfg()
    torch.manual_seed(1)
    enc = build_encoder(c.model, c.data.img_size)
    with torch.no_grad():  # trained-looking weights: the final norm too, so a dropped key would show
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = {ENCODER_PREFIX + k: v for k, v in enc.state_dict().items()}
    model["online.projector.w"] = torch.ones(3)  # not the encoder: must not be exported
    return {"format": FORMAT_VERSION, "step": step, "config": to_dict(c), "model": model}, enc.eval()


def test_timm_alone_reproduces_forward_features_exactly(tmp_path):
    state, enc = _training_state()
    out = save_timm_encoder(tmp_path / "encoder", state)
    assert is_timm_export(out) and sorted(p.name for p in out.iterdir()) == [TIMM_CONFIG, TIMM_WEIGHTS]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = enc.forward_features(x)
    torch.save(x, tmp_path / "x.pt")
    # A fresh interpreter that imports timm and torch only (no siamim module on the path).
    code = (
        "import sys, timm, torch\n"
        f"m = timm.create_model('local-dir:{out}', pretrained=True).eval()\n"
        f"x = torch.load('{tmp_path}/x.pt')\n"
        "with torch.no_grad(): y = m.forward_features(x)\n"
        f"torch.save(y, '{tmp_path}/y.pt')\n"
        "assert not [k for k in sys.modules if k.startswith('siamim')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    got = torch.load(tmp_path / "y.pt")
    assert got.shape == (3, 1 + 64, 64) and torch.equal(got, expected)


def test_config_json_carries_the_run_config_and_the_dataset_normalisation(tmp_path):
    state, _ = _training_state(step=9)
    meta = json.loads((save_timm_encoder(tmp_path / "e", state) / TIMM_CONFIG).read_text())
    assert meta["model_args"]["embed_dim"] == 64 and meta["model_args"]["img_size"] == [32, 32]
    assert meta["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert meta["pretrained_cfg"]["mean"] == [fashion_mnist.MEAN] * 3  # what the encoder was trained on
    assert meta["pretrained_cfg"]["std"] == [fashion_mnist.STD] * 3
    assert meta["siamim"]["step"] == 9 and meta["siamim"]["config"]["model"]["depth"] == 2


def test_export_loads_back_into_siamim_and_old_encoder_files_still_load(tmp_path):
    state, enc = _training_state()
    folder = save_timm_encoder(tmp_path / "encoder", state)
    back = load_timm_export(folder)
    assert back["kind"] == "encoder" and back["step"] == 5
    old = save_encoder(tmp_path / "old" / "checkpoint.pt", state)  # the previous artifact format
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = enc.forward_features(x)
        for loaded in (read_checkpoint(folder), read_checkpoint(old), read_checkpoint(old.parent)):
            encoder, c = load_encoder(loaded)
            assert c.model.embed_dim == 64 and torch.equal(encoder.forward_features(x), want)


def test_a_bare_timm_export_gets_its_config_from_the_weights(tmp_path):
    import timm
    from timm.models import save_for_hf

    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, num_classes=0
    ).eval()
    save_for_hf(vit, tmp_path / "bare", safe_serialization=True)
    state = read_checkpoint(tmp_path / "bare")
    encoder, c = load_encoder(state)
    assert (c.model.patch_size, c.model.depth, c.model.num_heads, c.data.img_size) == (8, 3, 4, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder.forward_features(x), vit.forward_features(x))
