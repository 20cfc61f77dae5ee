"""Data sets built from the data stage's manifest (pqv.stages.data): the stages' only way to images.

Every stage gets its images through `dataset(manifest, split, data_config)` so that the eager
model, the pruner's calibration, the finetune loop and the exported artifact all see the same
inputs with the same labels. `manifest` is the manifest (a dict) or the path of its file; nothing
here lists a folder. `data_config` is the model's timm preprocessing (input_size, mean, std,
interpolation, crop_pct).
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from ..plan import manifest as manifests
from ..plan.errors import PQVError
from ..plan.manifest import HIGH_DEPTH


def digits_pixels():
    """scikit-learn's 1,797 digits as a (1797, 64) array, read from the file scikit-learn ships
    (what its load_digits reads) without importing sklearn.datasets, which costs every job that
    reads them over a second (scipy); tests/test_data.py checks it equals load_digits."""
    import gzip
    import importlib.util

    import numpy as np

    (root,) = importlib.util.find_spec("sklearn").submodule_search_locations
    with gzip.open(Path(root) / "datasets" / "data" / "digits.csv.gz") as f:
        return np.loadtxt(f, delimiter=",")[:, :-1]


def _digits(manifest: dict, split: str, data_config: dict, training: bool, augment: dict | None = None, seed: int = 0) -> Dataset:
    """The manifest's digits (indices into scikit-learn's 8x8 images), upsampled to the model's input."""
    x = digits_pixels()
    items = manifests.split_of(manifest, split)["items"]
    idx = [i for _, i in items]
    images = torch.tensor(x[idx], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    chans, height, width = data_config["input_size"]
    images = torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    images = images.expand(-1, chans, -1, -1)
    mean = torch.tensor(data_config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(data_config["std"]).view(1, -1, 1, 1)
    return TensorDataset(((images - mean) / std).contiguous(), torch.tensor([label for label, _ in items], dtype=torch.long))


# The PIL mode that gives a model its input channels: photos are converted to what the model reads.
CHANNEL_MODES = {1: "L", 3: "RGB"}


def load_image(path: str, value_range: list[float] | None = None, mode: str = "RGB"):
    """A PIL image as a photo viewer shows it (turned by its EXIF orientation: phones store pixels in
    sensor order and say how to turn them), in `mode` (RGB, or L for a one-channel model); 16-bit
    and float images are scaled linearly from the data set's value range to 8 bits (convert("RGB")
    would clip them to 255)."""
    import numpy as np
    from PIL import Image, ImageOps

    with open(path, "rb") as f:
        im = Image.open(f)
        im.load()
    im = ImageOps.exif_transpose(im)
    if im.mode in HIGH_DEPTH:
        low, high = value_range or (0.0, 65535.0)
        values = (np.asarray(im, dtype=np.float64) - low) * (255.0 / max(high - low, 1e-12))
        im = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return im.convert(mode)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch: (the run's seed, epoch, the image's index
    in the split) alone, so which process or DataLoader worker draws it changes nothing. Tagged apart
    from pqv.stages.finetune.seed_epoch's (seed, epoch, rank), so no image shares a stream with the loop."""
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**64, epoch, index, 0x1A6E]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(value: int):
    """Python's random, numpy's and torch's global generators seeded with `value` inside, and left
    as they were outside: with workers 0 the transform runs in the training loop's process, whose
    draws (Mixup's) must not depend on the images'."""
    import random

    import numpy as np

    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class ManifestImages(Dataset):
    """The image files of one split of a manifest, with the training split's class index.

    With a `seed` (training), each image's random transform draws from its own stream,
    `sample_seed(seed, epoch, index)`: the same images whatever the DataLoader's worker count or the
    world size, and a run resumed mid-epoch draws what an uninterrupted one does. `epoch` is set by
    the training sampler's set_epoch (workers are started per epoch and take a copy of it)."""

    epoch = 0

    def __init__(self, manifest: dict, split: str, transform=None, channels: int = 3, seed: int | None = None):
        if channels not in CHANNEL_MODES:
            raise PQVError(
                f"the model reads {channels}-channel images; photos convert to 1 (gray) or 3 (RGB) channels",
                "set the model's in_chans to 1 or 3 (models[].kwargs)",
            )
        self.mode = CHANNEL_MODES[channels]
        chosen = manifests.split_of(manifest, split)
        folder = Path(chosen["folder"])
        self.samples = [(str(folder / rel), label) for label, rel in chosen["items"]]
        self.targets = [label for _, label in self.samples]
        self.classes = manifest["classes"]
        self.value_range = manifest.get("value_range")
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        image = load_image(path, self.value_range, self.mode)
        if not self.transform:
            return image, label
        if self.seed is None:
            return self.transform(image), label
        with seeded(sample_seed(self.seed, self.epoch, i)):
            return self.transform(image), label


def _imagefolder(manifest: dict, split: str, data_config: dict, training: bool, augment: dict | None = None, seed: int = 0) -> Dataset:
    """The manifest's files with timm's transforms for the model. `augment` holds timm
    create_transform options for training (auto_augment, re_prob, color_jitter, hflip), drawn per
    image from `seed` (ManifestImages)."""
    from timm.data import create_transform

    transform = create_transform(
        input_size=tuple(data_config["input_size"]),
        is_training=training,
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        interpolation=data_config.get("interpolation", "bicubic"),
        crop_pct=data_config.get("crop_pct", 0.875),
        **((augment or {}) if training else {}),
    )
    return ManifestImages(manifest, split, transform, channels=data_config["input_size"][0], seed=seed if training else None)


DATASETS = {"digits": _digits, "imagefolder": _imagefolder}


def num_classes(manifest) -> int:
    return len(manifests.of(manifest)["classes"])


def dataset(manifest, split: str, data_config: dict, training: bool = False, augment: dict | None = None, seed: int = 0) -> Dataset:
    """One split's images; `seed`: the run's, from which training draws each image's augmentation."""
    manifest = manifests.of(manifest)
    return DATASETS[manifest["dataset"]["name"]](manifest, split, data_config, training, augment, seed)


class _ResumableSampler(DistributedSampler):
    """DistributedSampler that leaves out the first `skip` indices of an epoch's order: a finetune
    resumed mid-epoch sees the rest of that epoch's batches without decoding the ones before."""

    skip = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if isinstance(self.dataset, ManifestImages):  # its per-image augmentation streams follow the epoch
            self.dataset.epoch = epoch

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


def loader(
    manifest,
    split: str,
    data_config: dict,
    batch_size: int,
    training: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    augment: dict | None = None,
    workers: int = 0,
):
    """A DataLoader; with world_size > 1 each rank gets its own shard (`batch_size` is per rank).

    Training shuffles through a DistributedSampler even in one process: its order depends only on
    (seed, epoch) (call `loader.sampler.set_epoch`), so N ranks with batch B see exactly the batches
    one process with batch N*B sees, and a resumed run sees the same order as an uninterrupted one.
    The incomplete last batch is dropped so that every rank takes the same number of steps.
    Evaluation shards without padding (rank r gets items r, r+N, ...), so counts sum exactly.
    """
    ds = dataset(manifest, split, data_config, training=training, augment=augment, seed=seed)
    sampler = None
    if training:
        sampler = _ResumableSampler(ds, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    elif world_size > 1:
        ds = Subset(ds, range(rank, len(ds), world_size))
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=training and len(sampler) >= batch_size,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )


def labels_of(manifest, split: str) -> list[int]:
    """Every item's class, from the manifest (no image is decoded)."""
    return [label for label, _ in manifests.split_of(manifests.of(manifest), split)["items"]]


def stratified_indices(labels: list[int], n: int, seed: int = 0) -> list[int]:
    """`n` indices drawn across classes: each class shuffled (seeded), then one per class in turn.

    ImageFolder trees are sorted by class, so "the first n" of CIFAR-10 or ImageNet are all class 0.
    This gives every class its share (within one image) and the same images for the same
    (labels, n, seed); a smaller n is a prefix of a larger one, so stages that draw different
    counts still share their first images.
    """
    gen = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    classes = sorted(by_class)
    queues = [[by_class[c][j] for j in torch.randperm(len(by_class[c]), generator=gen).tolist()] for c in classes]
    class_order = torch.randperm(len(classes), generator=gen).tolist()
    out: list[int] = []
    depth = 0
    while len(out) < min(n, len(labels)):
        for c in class_order:
            if depth < len(queues[c]) and len(out) < n:
                out.append(queues[c][depth])
        depth += 1
    return out


def sample(manifest, data_config: dict, n: int, split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels): `n` images of a split, drawn across classes with `seed`.

    The one sample every stage uses for calibration, fidelity checks and profiling inputs."""
    manifest = manifests.of(manifest)
    ds = dataset(manifest, split, data_config)
    idx = stratified_indices(labels_of(manifest, split), n, seed)
    items = [ds[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.long)


def sample_batch(manifest, data_config: dict, n: int, split: str, seed: int = 0) -> torch.Tensor:
    """The images of `sample`: fixed, class-balanced inputs for fidelity checks and profiling."""
    return sample(manifest, data_config, n, split, seed)[0]


# int8_static calibration and the export check draw from this seed's order of the training split:
# calibration its first quantize.calibration_images images, the check the ones after (`sample_after`)
CALIBRATION_SEED = 0


def sample_after(manifest, data_config: dict, skip: int, n: int, split: str, seed: int = 0) -> torch.Tensor:
    """The images `n` further along `sample`'s order after its first `skip`: none of them is in
    `sample(manifest, data_config, skip, split, seed)` (a smaller sample is the start of a larger
    one), and they are still drawn across classes. Fewer than `n` where the split holds fewer
    than `skip + n` images."""
    manifest = manifests.of(manifest)
    idx = stratified_indices(labels_of(manifest, split), skip + n, seed)[skip:]
    if not idx:
        return torch.empty(0)
    ds = dataset(manifest, split, data_config)
    return torch.stack([ds[i][0] for i in idx])


def calibration_batches(
    manifest, data_config: dict, batches: int, batch_size: int, seed: int = 0, split: str = "train"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`batches` batches of a class-balanced sample, shuffled (seeded) so every batch mixes classes:
    the gradient statistics of Taylor/Hessian importance see the whole label space."""
    images, labels = sample(manifest, data_config, batches * batch_size, split, seed)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 1))
    images, labels = images[order], labels[order]
    return list(zip(images.split(batch_size), labels.split(batch_size)))
