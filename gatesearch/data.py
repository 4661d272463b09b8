"""Data sets and loaders: ``build_data(cfg, seed) -> DataBundle``.

In-memory data sets (``digits``, ``cifar10``/``cifar100`` from an npz directory or torchvision,
``synthetic``) are held as one uint8 tensor ``[N, C, H, W]``; a batch is cut, augmented
(random crop with 4-pixel zero padding + horizontal flip, as He et al. 2016, Sec. 4.2) and
normalised as whole tensors inside ``__getitems__``, so CPU loading costs a few tensor ops per
batch instead of one PIL round-trip per image. With ``data.on_device`` (``auto``: when training on
CUDA) the uint8 arrays live on the training device instead and ``DeviceLoader`` does the same cut,
augmentation and normalisation there on whole batches, drawing from a ``torch.Generator`` on that
device: no workers, no host-to-device copy per step (airbench's layout, Jordan 2024). ``imagefolder``
(ImageNet layout) uses torchvision transforms on the host. The validation split is carved from train with ``data.split_seed``
(the same images for every trial); ``seed`` drives shuffling and augmentation.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gatesearch.config import DataConfig
from gatesearch.errors import UserError
from gatesearch.parallel import rank_world
from gatesearch.registry import Registry


@dataclass
class DataBundle:
    train: DataLoader | DeviceLoader  # DeviceLoader: data.on_device
    val: DataLoader | DeviceLoader | None  # None when data.val_fraction == 0
    test: DataLoader | DeviceLoader
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    # under data parallelism (``shard_bundle``): the whole training split's loader, every rank the same
    # batches (BN re-estimation); None: ``train`` is the whole split
    train_full: DataLoader | DeviceLoader | None = None


@dataclass
class Arrays:
    """Raw uint8 images ``[N, C, H, W]`` and int64 labels ``[N]`` of one split."""

    images: torch.Tensor
    labels: torch.Tensor


class ArrayDataset(Dataset):
    """uint8 images held in memory; ``__getitems__`` returns a ready float batch.

    ``DataLoader`` calls ``__getitems__(indices)`` with a whole batch of indices when the data
    set defines it, so augmentation runs once per batch on tensors (workers still work).
    """

    def __init__(self, data: Arrays, mean: torch.Tensor, std: torch.Tensor, augment: bool, pad: int = 4,
                 flip: bool = True) -> None:
        self.data, self.augment, self.pad, self.flip = data, augment, pad, flip
        self.mean = mean.view(1, -1, 1, 1)  # [1, C, 1, 1], in 0..1 units
        self.std = std.view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.data.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.data.images[idx]  # [B, C, H, W] uint8
        if self.augment:
            x = random_crop_flip(x, self.pad, self.flip)
        x = (x.float() / 255.0 - self.mean) / self.std
        return x, self.data.labels[idx]


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop after zero padding by ``pad`` and (``flip``) random horizontal flip.

    ``x [B, C, H, W]`` (any dtype, any device) -> same shape, on ``x``'s device. Draws from
    ``generator`` (on ``x``'s device), or from the global torch RNG (seeded by fit) when ``None``.
    Offsets are uniform in ``0..2*pad`` per axis, the flip a fair coin, each independent per image.
    """
    b, c, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # [B, C, H+2p, W+2p]
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # [B, 1, H, 1]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # [B, 1, 1, W]
        x = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                   rows, cols]
    if not flip:
        return x
    flips = torch.rand(b, generator=generator, device=dev) < 0.5
    return torch.where(flips[:, None, None, None], x.flip(3), x)


class DeviceLoader:
    """Batches cut from uint8 arrays resident on ``device`` (``data.on_device``): an iterable of
    ``(x [B, C, H, W] float32, y [B] int64)`` on ``device``, normalised by the train-split statistics
    as ``ArrayDataset``; with ``shuffle`` a fresh permutation per epoch and only full batches (the
    host loader's ``drop_last``), with ``augment`` ``random_crop_flip`` on the whole batch. Every
    draw comes from ``self.generator`` (on ``device``; ``evaluate`` reseeds it for BN re-estimation)."""

    def __init__(self, data: Arrays, mean: torch.Tensor, std: torch.Tensor, batch: int, shuffle: bool, augment: bool,
                 pad: int, flip: bool, device: torch.device, seed: int) -> None:
        self.images, self.labels = data.images.to(device), data.labels.to(device)  # [N, C, H, W] uint8, [N]
        self.mean, self.std = mean.to(device).view(1, -1, 1, 1), std.to(device).view(1, -1, 1, 1)
        self.batch, self.shuffle, self.augment, self.pad, self.flip = batch, shuffle, augment, pad, flip
        self.generator = torch.Generator(device).manual_seed(seed)
        # ``shard_bundle``: this rank's part; the augmentation then draws from its own generator
        self.rank, self.world, self.aug_generator = 0, 1, self.generator

    def sharded(self, rank: int, world: int, seed: int) -> DeviceLoader:
        """This loader's rank-``rank`` part under data parallelism (``shard_bundle``): training, each
        global batch's ``rank``-th slice (the permutation drawn from ``generator``, the same on every
        rank; the crops from a generator of this rank's own); evaluation, whole batches round robin."""
        out = copy.copy(self)
        out.rank, out.world = rank, world
        out.generator = torch.Generator(self.images.device).manual_seed(seed)
        out.aug_generator = torch.Generator(self.images.device).manual_seed(rank_seed(seed, rank))
        return out

    def _global_len(self) -> int:
        n = len(self.labels)
        return n // self.batch if self.shuffle else -(-n // self.batch)

    def __len__(self) -> int:
        n = self._global_len()
        return n if self.shuffle else len(range(self.rank, n, self.world))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = (torch.randperm(n, generator=self.generator, device=self.images.device) if self.shuffle
                 else torch.arange(n, device=self.images.device))
        part = self.batch // self.world
        for i in range(self._global_len()) if self.shuffle else range(self.rank, self._global_len(), self.world):
            idx = order[i * self.batch:(i + 1) * self.batch]
            if self.shuffle and self.world > 1:
                idx = idx[self.rank * part:(self.rank + 1) * part]
            x = self.images[idx]  # [B, C, H, W] uint8
            if self.augment:
                x = random_crop_flip(x, self.pad, self.flip, self.aug_generator)
            yield (x.float() / 255.0 - self.mean) / self.std, self.labels[idx]


def _collate_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # __getitems__ already made the batch


def _split(n: int, val_fraction: float, subset: int | None, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of a seeded permutation: val first, then at most ``subset`` train."""
    perm = np.random.default_rng(split_seed).permutation(n)
    n_val = int(round(n * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    return (train[:subset] if subset else train), val


def _take(a: Arrays, idx: np.ndarray) -> Arrays:
    t = torch.as_tensor(idx, dtype=torch.long)
    return Arrays(a.images[t], a.labels[t])


def _loader(ds: Dataset, batch: int, shuffle: bool, cfg: DataConfig, seed: int, collate: Callable | None) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds, batch_size=batch, shuffle=shuffle, drop_last=shuffle, num_workers=cfg.num_workers,
        generator=gen, collate_fn=collate, pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.num_workers > 0,
    )


def data_device(cfg: DataConfig, device: torch.device | None) -> torch.device | None:
    """Where ``data.on_device`` puts an in-memory data set when training on ``device``: ``None`` (the
    host loader) for ``false``, and for ``auto`` unless ``device`` is a GPU; ``true`` -> ``device`` (CPU
    when none is given)."""
    if cfg.on_device is False or (cfg.on_device == "auto" and (device is None or device.type != "cuda")):
        return None
    return device if device is not None else torch.device("cpu")


def bundle_from_arrays(
    cfg: DataConfig, seed: int, train: Arrays, test: Arrays, num_classes: int, pad: int, flip: bool = True,
    device: torch.device | None = None,
) -> DataBundle:
    """Split ``train`` into train/val, normalise by train-split channel statistics, build loaders:
    ``DeviceLoader``s on ``data_device(cfg, device)``, or host ``DataLoader``s when that is ``None``."""
    tr_idx, val_idx = _split(len(train.labels), cfg.val_fraction, cfg.train_subset, cfg.split_seed)
    tr = _take(train, tr_idx)
    sample = tr.images[:10000]  # tr is a random permutation: its head is a fair sample; bounds memory
    pixels = sample.float().div_(255.0).transpose(0, 1).flatten(1)  # [C, N*H*W]
    mean, std = pixels.mean(1), pixels.std(1).clamp_min(1e-3)
    on = data_device(cfg, device)

    def make(a: Arrays, train_split: bool) -> Iterable:
        aug, batch = train_split and cfg.augment, cfg.batch_size if train_split else cfg.eval_batch_size
        if on is not None:
            return DeviceLoader(a, mean, std, batch, train_split, aug, pad, flip, on, seed)
        ds = ArrayDataset(a, mean, std, augment=aug, pad=pad, flip=flip)
        return _loader(ds, batch, train_split, cfg, seed, _collate_batch)

    val = _take(train, val_idx) if len(val_idx) else None
    return DataBundle(
        train=make(tr, True),
        val=None if val is None else make(val, False),
        test=make(test, False),
        num_classes=num_classes,
        input_shape=tuple(train.images.shape[1:]),
    )


#: ``(cfg, seed, device)`` -> loaders; ``device``: the training device (``data.on_device``), ``None`` = host.
DATASETS: Registry[Callable[[DataConfig, int, torch.device | None], DataBundle]] = Registry("dataset")


def build_data(cfg: DataConfig, seed: int, device: torch.device | None = None) -> DataBundle:
    """The train/val/test loaders of ``cfg.name``; ``seed`` drives shuffling and augmentation;
    ``device``: the training device, where ``data.on_device`` may keep an in-memory set."""
    if cfg.name not in DATASETS:
        raise UserError(f"data.name: unknown dataset {cfg.name!r}; known: {', '.join(DATASETS.names())}")
    return DATASETS.get(cfg.name)(cfg, seed, device)


@DATASETS.register("digits")
def _digits(cfg: DataConfig, seed: int, device: torch.device | None = None) -> DataBundle:
    """scikit-learn's bundled 8x8 digits (1797 images, 1 channel, no download); a fixed 20 % test split."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn loads only for the digits set

    d = load_digits()
    images = torch.as_tensor(np.round(d.images * (255.0 / 16.0)).astype(np.uint8))[:, None]  # [N, 1, 8, 8]
    arrays = Arrays(images, torch.as_tensor(d.target, dtype=torch.long))
    perm = np.random.default_rng(12345).permutation(len(d.target))
    n_test = len(perm) // 5
    test = _take(arrays, perm[:n_test])  # flips would turn digits into other shapes: crop only
    return bundle_from_arrays(cfg, seed, _take(arrays, perm[n_test:]), test, 10, pad=1, flip=False, device=device)


def _npz_split(path: Path, num_classes: int) -> Arrays:
    if not path.is_file():
        raise UserError(f"data.root: {path} does not exist (need train.npz and test.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path}: not a readable npz with 'images' and 'labels' ({e})") from None
    check_arrays(images, labels, num_classes, str(path))
    return Arrays(torch.as_tensor(images).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(labels, dtype=torch.long))


def check_arrays(images: np.ndarray, labels: np.ndarray, num_classes: int, origin: str) -> None:
    """Refuse data that would crash mid-epoch or train on garbage: ``images`` uint8 ``[N, H, W, C]``
    with C in (1, 3) (channels last, as CIFAR's own arrays), ``labels`` integer ``[N]`` in
    ``[0, num_classes)``, N >= 1. The message names the file, the array and what was expected."""
    want = f"uint8 [N, H, W, C] with C = 1 or 3 (channels last), got {images.dtype} {list(images.shape)}"
    if images.dtype != np.uint8:
        raise UserError(f"{origin}: array 'images' must be {want}")
    if images.ndim != 4 or images.shape[3] not in (1, 3) or min(images.shape[1:3]) < 2:
        hint = "; it looks channels-first: transpose to [N, H, W, C]" if images.ndim == 4 and images.shape[1] in (
            1, 3) else ""
        raise UserError(f"{origin}: array 'images' must be {want}{hint}")
    if len(images) == 0:
        raise UserError(f"{origin}: array 'images' is empty (0 images)")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{origin}: array 'labels' must be integer class ids [N], got {labels.dtype} "
                        f"{list(labels.shape)}")
    if len(labels) != len(images):
        raise UserError(f"{origin}: array 'labels' has {len(labels)} entries for {len(images)} images")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise UserError(f"{origin}: array 'labels' holds class ids {low}..{high}; this data set has "
                        f"{num_classes} classes (0..{num_classes - 1})")


def _torchvision_split(cfg: DataConfig, train: bool, classes: int) -> Arrays:
    import torchvision  # lazy: torchvision's datasets load only for source=torchvision

    cls = torchvision.datasets.CIFAR10 if classes == 10 else torchvision.datasets.CIFAR100
    try:
        ds = cls(cfg.root, train=train, download=cfg.download)
    except RuntimeError as e:  # "Dataset not found or corrupted. You can use download=True ..."
        raise UserError(f"data.root: {cfg.root}: {e} (set data.download=true to fetch it)") from None
    return Arrays(torch.as_tensor(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets, dtype=torch.long))


def _cifar(classes: int) -> Callable[[DataConfig, int, torch.device | None], DataBundle]:
    def build(cfg: DataConfig, seed: int, device: torch.device | None = None) -> DataBundle:
        if cfg.root is None:
            raise UserError(f"data.root: {cfg.name} needs a directory (train.npz/test.npz, or torchvision's)")
        root = Path(cfg.root).expanduser()
        if cfg.source == "torchvision":
            train, test = _torchvision_split(cfg, True, classes), _torchvision_split(cfg, False, classes)
        else:
            if not root.is_dir():
                raise UserError(f"data.root: directory {root} does not exist")
            train, test = _npz_split(root / "train.npz", classes), _npz_split(root / "test.npz", classes)
            if train.images.shape[1:] != test.images.shape[1:]:
                raise UserError(f"data.root: {root}: test.npz images are {list(test.images.shape[1:])} (C, H, W), "
                                f"train.npz images {list(train.images.shape[1:])}")
        return bundle_from_arrays(cfg, seed, train, test, classes, pad=4, device=device)

    return build


DATASETS.add("cifar10", _cifar(10))
DATASETS.add("cifar100", _cifar(100))


@DATASETS.register("synthetic")
def _synthetic(cfg: DataConfig, seed: int, device: torch.device | None = None) -> DataBundle:
    """Random 3x32x32 images whose class shifts one channel's mean: learnable, instant, offline."""
    gen = torch.Generator().manual_seed(777)

    def split(n: int) -> Arrays:
        labels = torch.randint(0, 10, (n,), generator=gen)
        images = torch.randint(0, 160, (n, 3, 32, 32), generator=gen, dtype=torch.int32)
        images += (labels * 9).view(-1, 1, 1, 1) * torch.tensor([1, 0, 0]).view(1, 3, 1, 1)
        return Arrays(images.clamp(0, 255).to(torch.uint8), labels)

    return bundle_from_arrays(cfg, seed, split(cfg.synthetic_size), split(cfg.synthetic_size), 10, pad=4,
                              device=device)


@DATASETS.register("imagefolder")
def _imagefolder(cfg: DataConfig, seed: int, device: torch.device | None = None) -> DataBundle:
    """ImageNet layout: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` (the test split);
    always the host loader (files are decoded there), whatever ``device``."""
    import torchvision.transforms as T  # lazy: only the ImageFolder path needs them
    from torchvision.datasets import ImageFolder

    root = Path(cfg.root or "")
    for sub in ("train", "val"):
        if cfg.root is None or not (root / sub).is_dir():
            raise UserError(f"data.root: directory {root / sub} does not exist (ImageNet layout: train/ and val/)")
    check_image_folders(root)
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    size = cfg.image_size
    aug = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    plain = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), norm])
    train_aug = ImageFolder(str(root / "train"), aug if cfg.augment else plain, loader=decode_image)
    train_plain = ImageFolder(str(root / "train"), plain, loader=decode_image)
    tr_idx, val_idx = _split(len(train_aug), cfg.val_fraction, cfg.train_subset, cfg.split_seed)
    sub = torch.utils.data.Subset
    val = _loader(sub(train_plain, val_idx.tolist()), cfg.eval_batch_size, False, cfg, seed, None) if len(val_idx) else None
    return DataBundle(
        train=_loader(sub(train_aug, tr_idx.tolist()), cfg.batch_size, True, cfg, seed, None),
        val=val,
        test=_loader(ImageFolder(str(root / "val"), plain, loader=decode_image), cfg.eval_batch_size, False, cfg, seed,
                     None),
        num_classes=len(train_aug.classes),
        input_shape=(3, size, size),
    )


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's


def decode_image(path: str) -> Any:
    """An image file as RGB (ImageFolder's loader); a file that cannot be decoded stops training with one
    line naming it, from a loader worker too (never a PIL traceback mid-epoch)."""
    from PIL import Image  # lazy: only image folders decode files

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"data.root: {path} is not a readable image ({type(e).__name__}: {e})") from None


def check_image_folders(root: Path, sample: int = 2) -> None:
    """Before any work: ``root/train`` and ``root/val`` hold the same class directories (names, hence the
    sorted order ImageFolder labels them in: other classes would train on wrong labels, silently), every
    class directory holds images, and the first ``sample`` files of each class decode."""
    classes = {}
    for split in ("train", "val"):
        folder = root / split
        names = sorted(d.name for d in folder.iterdir() if d.is_dir())
        if not names:
            raise UserError(f"data.root: {folder} has no class directories (ImageNet layout: {split}/<class>/<image>)")
        classes[split] = names
    if classes["train"] != classes["val"]:
        only_t = sorted(set(classes["train"]) - set(classes["val"]))
        only_v = sorted(set(classes["val"]) - set(classes["train"]))
        raise UserError(f"data.root: the classes of {root / 'val'} differ from {root / 'train'}'s (only in train: "
                        f"{only_t[:5]}, only in val: {only_v[:5]}); their labels would not match")
    if len(classes["train"]) < 2:
        raise UserError(f"data.root: {root / 'train'} has one class ({classes['train'][0]}); a classifier needs two or more")
    for split in ("train", "val"):
        for name in classes[split]:
            files = sorted(p for p in (root / split / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise UserError(f"data.root: class directory {root / split / name} holds no image "
                                f"({', '.join(IMAGE_SUFFIXES)})")
            for p in files[:sample]:
                decode_image(str(p))


def rank_seed(seed: int, rank: int) -> int:
    """Rank ``rank``'s seed for what each rank draws on its own (crops, flips): ``seed`` itself on rank 0,
    so rank 0 draws as one process does; a seed spawned from ``(seed, rank)`` elsewhere."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _reseed_worker(rank: int, worker_id: int) -> None:
    """A loader worker's seed moved by its rank (the base seed comes from the loader generator, which
    every rank shares so that the shuffles agree; the augmentations should not)."""
    s = rank_seed(torch.initial_seed() % 2**32, rank)
    torch.manual_seed(s)
    random.seed(s)


class ShardBatches(Sampler[list[int]]):
    """Rank ``rank``'s slice ``[rank * b, (rank + 1) * b)`` of each global batch of ``batches`` (a batch
    sampler, e.g. the shuffling ``BatchSampler`` one process would use), ``b = len(batch) // world``: a
    ``DistributedSampler`` that splits every mini-batch rather than the epoch, so the ``world`` shards of
    a step are exactly one process's mini-batch of that step."""

    def __init__(self, batches: Iterable[list[int]], rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            b = len(batch) // self.world
            yield list(batch)[self.rank * b:(self.rank + 1) * b]


class RoundRobinBatches(Sampler[list[int]]):
    """Whole batches of ``batches`` dealt round robin: rank ``rank`` gets batches ``rank, rank + world,
    ...`` (evaluation: no sample is repeated or dropped, unlike ``DistributedSampler``'s padding, so the
    ranks' summed counts are one process's; ``parallel.global_batch_index`` names a batch's place)."""

    def __init__(self, batches: Iterable[list[int]], rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, len(self.batches), self.world))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batches):
            if i % self.world == self.rank:
                yield batch


def _shard_loader(loader: DataLoader | DeviceLoader, train: bool, rank: int, world: int, seed: int) -> Any:
    if isinstance(loader, DeviceLoader):
        return loader.sharded(rank, world, seed)
    sampler = (ShardBatches if train else RoundRobinBatches)(loader.batch_sampler, rank, world)
    return DataLoader(loader.dataset, batch_sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, generator=loader.generator,
                      persistent_workers=loader.persistent_workers,
                      worker_init_fn=functools.partial(_reseed_worker, rank) if loader.num_workers else None)


def shard_bundle(bundle: DataBundle, batch_size: int, seed: int) -> DataBundle:
    """This rank's loaders under data parallelism (``parallel.rank_world``; ``bundle`` itself in one
    process). ``data.batch_size`` is the *global* mini-batch: each step every rank gets its
    ``batch_size / world`` slice of the batch one process would draw with the same ``seed``
    (``ShardBatches``; so steps per epoch and the lr schedule are unchanged), evaluation splits are dealt
    in whole batches (``RoundRobinBatches``), and ``train_full`` keeps the whole training loader."""
    rank, world = rank_world()
    if world == 1:
        return bundle
    if batch_size % world:
        raise UserError(f"data.batch_size: the global mini-batch of {batch_size} does not split evenly over "
                        f"{world} workers (use a multiple of {world})")

    def shard(loader: Any, train: bool) -> Any:
        return None if loader is None else _shard_loader(loader, train, rank, world, seed)

    return replace(bundle, train=shard(bundle.train, True), val=shard(bundle.val, False),
                   test=shard(bundle.test, False), train_full=bundle.train)


def eval_loader(bundle: DataBundle) -> Iterable:
    """The loader evaluation during training uses: validation, or test when there is no val split."""
    return bundle.val if bundle.val is not None else bundle.test


def describe(cfg: DataConfig, bundle: DataBundle) -> list[dict[str, Any]]:
    """What each split of ``bundle`` is, as an MLflow dataset input names it: ``name``, ``context``
    (training / validation / test), ``n`` images, ``source`` and a ``digest``: SHA-256 (first 32 hex
    digits, MLflow's column holds 36) over the whole split, its uint8 images and labels for an
    in-memory set, its file paths and labels for an image folder; equal digests mean the same images."""
    out = []
    for context, loader in (("training", bundle.train), ("validation", bundle.val), ("test", bundle.test)):
        if loader is None:
            continue
        h = hashlib.sha256()
        ds = getattr(loader, "dataset", None)
        arrays = (Arrays(loader.images, loader.labels) if isinstance(loader, DeviceLoader)
                  else ds.data if isinstance(ds, ArrayDataset) else None)
        if arrays is not None:
            h.update(arrays.images.detach().cpu().contiguous().numpy().tobytes())
            h.update(arrays.labels.detach().cpu().numpy().tobytes())
            n = len(arrays.labels)
        else:  # an image folder: the files and their labels (reading every image would take minutes)
            inner = getattr(ds, "dataset", ds)  # a Subset (train/val of root/train) picks by index
            samples = getattr(inner, "samples", [])
            samples = [samples[i] for i in ds.indices] if hasattr(ds, "indices") else samples
            for path, label in samples:
                h.update(f"{path}\t{label}\n".encode())
            n = len(samples)
        out.append({"name": f"{cfg.name}-{context}", "context": context, "n": n, "digest": h.hexdigest()[:32],
                    "source": str(cfg.root) if cfg.root else cfg.name,
                    "input_shape": list(bundle.input_shape), "num_classes": bundle.num_classes})
    return out
