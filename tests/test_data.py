"""Samples that every stage draws (calibration, fidelity checks, profiling) cover every class.

ImageFolder trees are sorted by class, so "the first N images" of CIFAR-10 or ImageNet are all
class 0; these tests use a small sorted ImageFolder with several classes."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from pqv import data

CLASSES = ["airplane", "bird", "cat", "deer", "dog", "frog"]
DATA_CONFIG = {"input_size": [3, 16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
               "interpolation": "bilinear", "crop_pct": 1.0}


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory):
    """train/ and val/ with 6 classes x 12 JPEGs each, every class a different colour."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagefolder")
    for split in ("train", "val"):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(12):
                Image.new("RGB", (20, 20), (40 * c, 255 - 40 * c, 10 * i)).save(folder / f"{i:04d}.jpg")
    return {"name": "imagefolder", "root": str(root), "train_dir": "train", "eval_dir": "val"}


def classes_of(spec, images_by_sample, split="eval"):
    """Class of each sampled image, found by matching it against the split's images."""
    ds = data.dataset(spec, split, DATA_CONFIG)
    table = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = data.labels_of(ds)
    return [labels[int((table - x).abs().flatten(1).sum(1).argmin())] for x in images_by_sample]


def test_every_class_appears_in_the_check_and_calibration_samples(imagefolder):
    images = data.sample_batch(imagefolder, DATA_CONFIG, 12)  # export check, profile input
    counts = Counter(classes_of(imagefolder, images))
    assert set(counts) == set(range(len(CLASSES))) and set(counts.values()) == {2}
    calibration = data.sample_batch(imagefolder, DATA_CONFIG, 18, split="train")  # int8 static calibration
    assert set(Counter(classes_of(imagefolder, calibration, "train")).values()) == {3}


def test_the_same_seed_and_count_give_the_same_images_in_every_stage(imagefolder):
    a, la = data.sample(imagefolder, DATA_CONFIG, 10)
    b, lb = data.sample(imagefolder, DATA_CONFIG, 10)
    assert torch.equal(a, b) and torch.equal(la, lb)
    prefix, _ = data.sample(imagefolder, DATA_CONFIG, 4)
    assert torch.equal(prefix, a[:4])  # a smaller sample is the start of a larger one
    other, _ = data.sample(imagefolder, DATA_CONFIG, 10, seed=1)
    assert not torch.equal(other, a)


def test_taylor_calibration_batches_are_shuffled_across_classes(imagefolder):
    batches = data.calibration_batches(imagefolder, DATA_CONFIG, batches=3, batch_size=6)
    assert [len(x) for x, _ in batches] == [6, 6, 6]
    labels = torch.cat([y for _, y in batches])
    assert set(Counter(labels.tolist()).values()) == {3}
    assert all(len(set(y.tolist())) > 1 for _, y in batches)  # no batch is one class
    again = data.calibration_batches(imagefolder, DATA_CONFIG, batches=3, batch_size=6)
    assert all(torch.equal(x, x2) for (x, _), (x2, _) in zip(batches, again))


def test_a_max_subset_sample_still_covers_every_class(imagefolder):
    spec = {**imagefolder, "max_eval": 30}
    labels = data.sample(spec, DATA_CONFIG, 12)[1].tolist()
    assert len(set(labels)) == len(CLASSES)


def test_stratified_indices_handle_uneven_and_small_classes():
    labels = [0] * 10 + [1] * 2 + [2] * 5
    idx = data.stratified_indices(labels, 9, seed=0)
    assert len(idx) == len(set(idx)) == 9
    assert Counter(labels[i] for i in idx) == Counter({0: 4, 2: 3, 1: 2})
    assert len(data.stratified_indices(labels, 100)) == len(labels)


def test_digits_samples_cover_every_class():
    dc = {"input_size": [1, 8, 8], "mean": [0.5], "std": [0.5]}
    _, labels = data.sample({"name": "digits"}, dc, 20)
    assert set(Counter(labels.tolist()).values()) == {2}
