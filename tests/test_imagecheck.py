"""A bad ImageFolder is reported up front, whole, in one line, and a good one is checked only once."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pqv import imagecheck
from pqv.errors import PQVError

from .conftest import TIMM_NAME
from .test_errors import one_line


def _jpeg(path, shade=0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), (shade, 255 - shade, 60)).save(path, quality=90)


def _tree(root, bad=True):
    for split in ("train", "val"):
        for c, name in enumerate(["cat", "dog", "owl"]):
            for i in range(3):
                _jpeg(root / split / name / f"{i}.jpg", 40 * c + i)
    if bad:
        cut = root / "train" / "cat" / "0.jpg"
        cut.write_bytes(cut.read_bytes()[:300])  # a truncated JPEG: its header still opens
        (root / "train" / "dog" / "1.jpg").write_bytes(b"not an image")
        (root / "train" / "empty").mkdir()
        (root / "train" / "dog" / "notes.txt").write_text("not an image extension: ImageFolder skips it")
    return root


def test_every_unreadable_image_and_empty_class_in_one_error(tmp_path):
    root = _tree(tmp_path)
    with pytest.raises(PQVError) as e:
        imagecheck.check(root / "train")
    text = str(e.value)
    assert "2 unreadable image(s): cat/0.jpg (OSError: " in text  # PIL: truncated
    assert "dog/1.jpg (UnidentifiedImageError" in text
    assert "1 empty class folder(s): empty" in text and "notes.txt" not in text
    assert "\n" not in text and "(fix: replace or delete the unreadable files and add images" in text
    imagecheck.check(root / "val")  # the good split passes


def test_reading_either_split_checks_both(tmp_path):
    from pqv import data

    root = _tree(tmp_path)  # the bad images are in train/
    config = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}
    with pytest.raises(PQVError, match="train has 2 unreadable image"):
        data.dataset({"name": "imagefolder", "root": str(root)}, "eval", config)  # the model stage's first read


def test_a_checked_folder_is_not_decoded_again_until_it_changes(tmp_path, monkeypatch):
    root = _tree(tmp_path, bad=False)
    imagecheck.check(root / "train")
    assert len(list(imagecheck.cache_dir().glob("*.json"))) >= 1

    def no_decoding(path):
        raise AssertionError("decoded again")

    monkeypatch.setattr(imagecheck, "decode_problem", no_decoding)
    imagecheck.check(root / "train")  # cached: path and folder mtimes unchanged
    monkeypatch.undo()
    (root / "train" / "owl" / "new.jpg").write_bytes(b"\xff\xd8\xff broken")  # a new file changes owl/'s mtime
    with pytest.raises(PQVError, match="1 unreadable image.*owl/new.jpg"):
        imagecheck.check(root / "train")


def test_the_first_stage_that_reads_the_folder_stops_with_one_line_and_no_file(tmp_path):
    root = _tree(tmp_path / "data")
    out = tmp_path / "out" / "model.safetensors"
    cfg = {"id": "t", "timm_name": TIMM_NAME, "weights": "train",
           "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 1, "num_heads": 3},
           "train": {"epochs": 1, "batch_size": 4}}
    result = subprocess.run([sys.executable, "-m", "pqv", "model", "--model-cfg", json.dumps(cfg),
                             "--data", json.dumps({"name": "imagefolder", "root": str(root)}),
                             "--out", str(out), "--metrics", str(tmp_path / "out" / "m.csv")],
                            capture_output=True, text=True)
    one_line(result, "model", "error: data folder", "cat/0.jpg (OSError: ", "1 empty class folder(s): empty")
    assert not out.parent.exists() or not any(out.parent.iterdir())
