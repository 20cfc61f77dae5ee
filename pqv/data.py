"""Data sets, by name: the bundled digits (default, no download) and any ImageFolder tree.

Every stage gets its images through `dataset(spec, split, data_config)` so that the eager model,
the pruner's calibration, the finetune loop and the exported artifact all see the same inputs.
`data_config` is the model's timm preprocessing (input_size, mean, std, interpolation, crop_pct).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .errors import PQVError

SPLITS = ("train", "eval")


def _digits(spec: dict, split: str, data_config: dict, training: bool, augment: dict | None = None) -> Dataset:
    """scikit-learn's 1,797 handwritten 8x8 digits, split 80/20 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    idx_train, idx_eval = train_test_split(
        range(len(y)), test_size=0.2, stratify=y, random_state=spec.get("split_seed", 0)
    )
    idx = idx_train if split == "train" else idx_eval
    images = torch.tensor(x[idx], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    chans, height, width = data_config["input_size"]
    images = torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    images = images.expand(-1, chans, -1, -1)
    mean = torch.tensor(data_config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(data_config["std"]).view(1, -1, 1, 1)
    return TensorDataset(((images - mean) / std).contiguous(), torch.tensor(y[idx], dtype=torch.long))


def _imagefolder(spec: dict, split: str, data_config: dict, training: bool, augment: dict | None = None) -> Dataset:
    """An ImageFolder tree (`root/<train_dir>/<class>/*.jpg`) with timm's transforms for the model.

    `augment` holds timm create_transform options for training (auto_augment, re_prob, color_jitter,
    hflip); the digits tensors are used as they are.
    """
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    root = spec.get("root")
    if not root:
        raise PQVError("dataset 'imagefolder' needs dataset.root", "set dataset.root to the folder holding train/ and val/")
    folder = Path(root).expanduser() / spec.get(f"{split}_dir", "train" if split == "train" else "val")
    if not folder.is_dir():
        raise PQVError(f"data folder {folder} does not exist", f"check dataset.root and dataset.{split}_dir in the config")
    from .imagecheck import check_splits

    check_splits(spec)  # every unreadable image and empty class of both splits, once (cached)
    transform = create_transform(
        input_size=tuple(data_config["input_size"]),
        is_training=training,
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        interpolation=data_config.get("interpolation", "bicubic"),
        crop_pct=data_config.get("crop_pct", 0.875),
        **((augment or {}) if training else {}),
    )
    return ImageFolder(str(folder), transform=transform)


DATASETS = {"digits": _digits, "imagefolder": _imagefolder}


def num_classes(spec: dict) -> int:
    if spec["name"] == "digits":
        return 10
    folder = Path(spec.get("root") or "").expanduser() / spec.get("train_dir", "train")
    if not folder.is_dir():
        raise PQVError(f"data folder {folder} does not exist", "check dataset.root in the config")
    return sum(1 for p in folder.iterdir() if p.is_dir())


def dataset(spec: dict, split: str, data_config: dict, training: bool = False, augment: dict | None = None) -> Dataset:
    if spec["name"] not in DATASETS:
        raise PQVError(f"unknown dataset '{spec['name']}'", f"use one of {', '.join(DATASETS)}")
    ds = DATASETS[spec["name"]](spec, split, data_config, training, augment)
    limit = spec.get(f"max_{split}")
    if limit and limit < len(ds):
        # A fixed random subset, the same in every stage, so small runs stay representative.
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:limit]
        ds = Subset(ds, sorted(order.tolist()))
    return ds


def loader(spec: dict, split: str, data_config: dict, batch_size: int, training: bool = False, seed: int = 0,
           rank: int = 0, world_size: int = 1, augment: dict | None = None):
    """A DataLoader; with world_size > 1 each rank gets its own shard (`batch_size` is per rank).

    Training shuffles through a DistributedSampler even in one process: its order depends only on
    (seed, epoch) (call `loader.sampler.set_epoch`), so N ranks with batch B see exactly the batches
    one process with batch N*B sees, and a resumed run sees the same order as an uninterrupted one.
    The incomplete last batch is dropped so that every rank takes the same number of steps.
    Evaluation shards without padding (rank r gets items r, r+N, ...), so counts sum exactly.
    """
    from torch.utils.data.distributed import DistributedSampler

    ds = dataset(spec, split, data_config, training=training, augment=augment)
    sampler = None
    if training:
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    elif world_size > 1:
        ds = Subset(ds, range(rank, len(ds), world_size))
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=training and len(sampler) >= batch_size,
        num_workers=spec.get("workers", 0),
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )


def labels_of(ds: Dataset) -> list[int]:
    """Every item's class without decoding an image (ImageFolder keeps them; digits are tensors)."""
    if isinstance(ds, Subset):
        inner = labels_of(ds.dataset)
        return [inner[i] for i in ds.indices]
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].tolist()
    if hasattr(ds, "targets"):
        return list(ds.targets)
    return [int(ds[i][1]) for i in range(len(ds))]


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


def sample(spec: dict, data_config: dict, n: int, split: str = "eval", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels): `n` images of a split, drawn across classes with `seed`.

    The one sample every stage uses for calibration, fidelity checks and profiling inputs."""
    ds = dataset(spec, split, data_config)
    idx = stratified_indices(labels_of(ds), n, seed)
    items = [ds[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.long)


def sample_batch(spec: dict, data_config: dict, n: int, split: str = "eval", seed: int = 0) -> torch.Tensor:
    """The images of `sample`: fixed, class-balanced inputs for fidelity checks and profiling."""
    return sample(spec, data_config, n, split, seed)[0]


def calibration_batches(spec: dict, data_config: dict, batches: int, batch_size: int, seed: int = 0,
                        split: str = "train") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`batches` batches of a class-balanced sample, shuffled (seeded) so every batch mixes classes:
    the gradient statistics of Taylor/Hessian importance see the whole label space."""
    images, labels = sample(spec, data_config, batches * batch_size, split, seed)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 1))
    images, labels = images[order], labels[order]
    return list(zip(images.split(batch_size), labels.split(batch_size)))
