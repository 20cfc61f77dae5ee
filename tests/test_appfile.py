"""Issue 40 item 5d: an app file's steps, followed with PIL and numpy alone, give the very tensor PQV
scores the file with (pqv.common.datasets: timm's evaluation transform), on photos where every step
matters: non-uniform (gradients and shapes), EXIF-turned, of other aspect ratios than the model's
input, at 224 px. (The workflow's app-file test uses uniform 20x20 images: resize, crop,
interpolation and orientation are all no-ops there.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pqv.common import appfile, datasets
from pqv.stages import data

# (size, EXIF orientation) of each photo: landscape, portrait, odd sizes, a crop offset of an odd
# half-pixel, and phones' turned pixels (6, 8: a quarter turn; 3: upside down)
PHOTOS = [((300, 200), None), ((200, 300), 6), ((257, 193), 8), ((224, 300), 3), ((640, 481), 6), ((231, 231), None)]


def _photo(size: tuple[int, int], seed: int):
    """Gradients under shapes of several colours: every pixel differs from its neighbours' mean."""
    from PIL import Image, ImageDraw

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([255 * xx / w, 255 * yy / h, 128 + 127 * np.sin((xx + 2 * yy) / (7 + seed))], -1)
    im = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    draw.ellipse((w // 5, h // 6, w // 2, h // 2), fill=(250, 30 + 20 * seed, 40))
    draw.rectangle((w // 2, h // 2, w - w // 8, h - h // 9), fill=(20, 40, 230 - 10 * seed))
    draw.line((0, h - 1, w - 1, 0), fill=(255, 255, 255), width=3)
    return im


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for split in ("train", "val"):
        for c, name in enumerate(("cats", "dogs")):
            for i, (size, orientation) in enumerate(PHOTOS):
                path = root / split / name / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                im = _photo(size, i + 3 * c)
                if orientation is None:
                    im.save(path, quality=95)
                    continue
                exif = Image.Exif()
                exif[data.ORIENTATION] = orientation
                # stored as the sensor did: the tag turns it back (exif_transpose undoes the transpose)
                undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
                im.transpose(undo[orientation]).save(path, quality=95, exif=exif)
    return data.scan({"name": "imagefolder", "root": str(root)})


def follow(path: str, steps: list[dict]) -> np.ndarray:
    """A photo through an app file's steps, with PIL and numpy alone (what an app does)."""
    from PIL import Image, ImageOps

    resample = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }
    im = Image.open(path)
    im.load()
    x = None
    for step in steps:
        op = step["op"]
        if op == "exif_transpose":
            im = ImageOps.exif_transpose(im)
        elif op == "convert":
            im = im.convert(step["mode"])
        elif op == "resize_shorter_side":  # the shorter side to size, the longer to floor(size * longer / shorter)
            w, h = im.size
            size = step["size"]
            new = (size, math.floor(size * h / w)) if w <= h else (math.floor(size * w / h), size)
            im = im.resize(new, resample[step["interpolation"]])
        elif op == "resize_to_cover":  # one scale for both sides: the smallest that covers size [height, width]
            w, h = im.size
            th, tw = step["size"]
            ratio = min(h / th, w / tw)
            new = (round(w / ratio), round(h / ratio))  # Python's round: halves to even
            im = im.resize(new, resample[step["interpolation"]])
        elif op == "center_crop":
            ch, cw = step["size"]
            w, h = im.size
            left, top = round((w - cw) / 2), round((h - ch) / 2)
            im = im.crop((left, top, left + cw, top + ch))
        elif op == "to_float":
            x = np.asarray(im, dtype=np.float32) * np.float32(step["scale"])
            x = x[:, :, None] if x.ndim == 2 else x
        elif op == "normalize":
            x = (x - np.array(step["mean"], np.float32)) / np.array(step["std"], np.float32)
        else:
            raise AssertionError(f"a step the test does not know: {op}")
    return x.transpose(2, 0, 1)


@pytest.mark.parametrize(
    "data_config",
    [
        {
            "input_size": [3, 224, 224],
            "crop_pct": 0.875,
            "interpolation": "bicubic",  # DeiT's
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        {
            "input_size": [3, 224, 160],
            "crop_pct": 0.9,
            "interpolation": "bilinear",  # a non-square model
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
        {"input_size": [3, 160, 224], "crop_pct": 1.0, "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        {
            "input_size": [1, 224, 224],
            "crop_pct": 0.95,
            "interpolation": "bicubic",  # a gray model: convert("L")
            "mean": [0.45],
            "std": [0.25],
        },
    ],
    ids=["deit-224", "224x160", "160x224-crop1", "gray-224"],
)
def test_the_app_files_steps_give_the_tensor_pqv_scores_the_file_with(photos, data_config):
    app = appfile.describe(data_config, photos, "model.ptl", "ptl")
    assert app["input"]["shape"] == [1, *data_config["input_size"]]
    ds = datasets.dataset(photos, "eval", data_config)
    folder = Path(photos["splits"]["eval"]["folder"])
    assert len(ds) == 2 * len(PHOTOS)
    for i, (_, rel) in enumerate(photos["splits"]["eval"]["items"]):
        pqv = ds[i][0].numpy()
        ours = follow(str(folder / rel), app["preprocess"])
        assert ours.shape == pqv.shape == tuple(data_config["input_size"]), rel
        np.testing.assert_allclose(ours, pqv, rtol=0, atol=1e-5, err_msg=rel)


def test_the_app_file_says_how_pil_resizes_and_converts_to_gray():
    """What an app on another image library needs to match PIL: its resize antialiases (the filter
    widens with the reduction), and convert("L") is ITU-R 601-2 luma."""
    app = appfile.describe(
        {"input_size": [1, 224, 224], "crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.5], "std": [0.5]},
        {"classes": ["a", "b"]},
        "model.ptl",
        "ptl",
    )
    steps = {s["op"]: s for s in app["preprocess"]}
    assert "antialias" in steps["resize_shorter_side"]["why"]
    assert "L = R * 299/1000 + G * 587/1000 + B * 114/1000" in steps["convert"]["why"]
    assert "ITU-R 601-2" in steps["convert"]["why"]


def test_the_gray_formula_the_app_file_gives_is_pils():
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    gray = np.asarray(Image.fromarray(pixels).convert("L")).astype(np.int64)
    r, g, b = (pixels[..., c].astype(np.int64) for c in range(3))
    assert "(R * 19595 + G * 38470 + B * 7471 + 32768) >> 16" in appfile.GRAY
    assert np.array_equal(gray, (r * 19595 + g * 38470 + b * 7471 + 32768) >> 16)
