"""Issue 19 item 4: bad ImageFolder trees fail before any Ray worker starts (jobs/pretrain.py, jobs/prepare_data.py),
exit 2 with one line naming the folder or file and the fix; a damaged file in prepare_data's full check too."""

from __future__ import annotations

import importlib.util
import time

import pytest

from siamim.config import load_config
from siamim.orchestration.driver.preflight import PreflightError, check_data
from tests.data.test_folder_check import CASES, png_bytes, write_tree
from tests.jobs.helpers import REPO
from tests.jobs.test_pretrain_cli import load_cli


def load_prepare_data():
    spec = importlib.util.spec_from_file_location("prepare_data_cli", REPO / "jobs" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", ["no images", "empty class folder", "no test split", "corrupt header"])
def test_pretrain_on_a_bad_tree_is_exit_2_before_ray(base_env, tmp_path, capsys, case):
    make, where, fix = CASES[case]
    make(tmp_path / "tree")
    start = time.time()
    rc = load_cli().main(
        [
            "--storage",
            str(tmp_path / "runs"),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/m.db",
            "data.dataset=image_folder",
            f"data.root={tmp_path / 'tree'}",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 2, captured.err[-3000:]
    err = captured.err.strip()
    assert err.startswith("error: data.root: ") and where in err and fix in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "Ray" not in captured.out + captured.err  # no Ray instance was started
    assert time.time() - start < 60
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_single_class_tree_is_warned_about_before_training(tmp_path):
    cfg = load_config("tiny", ["data.dataset=image_folder", f"data.root={write_tree(tmp_path / 't', ('cat',))}"])
    lines = []
    check_data(cfg, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("[siamim] warning: data.root: ") and "single class" in lines[0]
    with pytest.raises(PreflightError, match="is not a directory"):
        check_data(load_config("tiny", ["data.dataset=image_folder", f"data.root={tmp_path / 'nope'}"]))


def test_prepare_data_checks_every_header_before_ray(base_env, tmp_path, capsys):
    root = write_tree(tmp_path / "tree", per_class=40)
    (root / "train" / "dog" / "33.png").write_bytes(b"GIF89a not really")  # past any bounded sample
    rc = load_prepare_data().main(["--source", "image_folder", "--root", str(root), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    assert "train/dog/33.png is not a readable image" in captured.err and "replace it or delete it" in captured.err
    assert "Ray" not in captured.out + captured.err and not (tmp_path / "out").exists()


def test_prepare_data_decodes_every_file_and_names_a_damaged_one(base_env, tmp_path, capsys):
    root = write_tree(tmp_path / "tree", classes=("cat",))  # also: a single class, warned about
    good = png_bytes(3)
    (root / "test" / "cat" / "1.png").write_bytes(good[: len(good) // 2])  # the header reads, the pixels do not
    rc = load_prepare_data().main(
        ["--source", "image_folder", "--root", str(root), "--out", str(tmp_path / "out"), "--concurrency", "1"]
    )
    captured = capsys.readouterr()
    assert rc == 2, captured.err[-3000:]
    err = [line for line in captured.err.splitlines() if line.startswith("prepare_data:")]
    assert len(err) == 1 and "test/cat/1.png is damaged: it cannot be decoded" in err[0], captured.err[-3000:]
    assert "no manifest written" in err[0]
    assert "[prepare_data] warning: " in captured.out and "single class (cat)" in captured.out
    assert not (tmp_path / "out" / "manifest.json").exists()
