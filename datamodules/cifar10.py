"""CIFAR-10 (Krizhevsky 2009) through torchvision's own parser, with solo-learn's CIFAR augmentations.

Every train item is two augmented views of one image and its label. Both views follow solo-learn's CIFAR recipe
(``scripts/pretrain/cifar/augmentations/asymmetric.yaml``, applied in the order of its ``CifarTransform``):
RandomResizedCrop(32, scale=(crop_min_scale, 1), bicubic), ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8,
RandomGrayscale(p=0.2), RandomHorizontalFlip(p=0.5), then ``(x / 255 - mean) / std`` with the CIFAR-10 channel
statistics. ``views="simclr"`` uses this recipe for both views (solo-learn's own ``symmetric.yaml`` jitters harder,
(0.8, 0.8, 0.8, 0.2), and blurs with p=0.5); ``views="byol"`` adds RandomSolarize(128 on uint8, i.e. 0.5 on [0, 1])
with p=0.2 to view 2 only, as in ``asymmetric.yaml``; ``views="vicreg"`` solarizes both views with p=0.1, as
solo-learn's ``cifar/vicreg.yaml`` (which also crops from scale 0.2: ``crop_min_scale``); ``blur_prob`` adds
GaussianBlur(13, sigma 0.1-2) after the grayscale step to both views (0 in solo-learn's CIFAR recipe). Evaluation
images are only normalized.

``augment_on="cpu"`` makes the views with torchvision's transforms on PIL images in the loader's workers;
``augment_on="device"`` holds the train split as uint8 on the training device and makes each batch's views there with
:mod:`datamodules.gpu_augment`, the same distributions with independent parameters per image.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.base import EVALUATION_VIEWS_STREAM, DataModule, collate_views, stacked_views
from datamodules.epochs import epoch_seed, shard
from datamodules.gpu_augment import BatchedViews, ViewParams, ViewRecipe
from ssl_bench.batch import Views
from ssl_bench.config import DataConfig, check_choice, check_non_negative, check_range
from ssl_bench.errors import DataError
from ssl_bench.registry import register

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Solarisation probability of (view 1, view 2).
VIEWS = {"simclr": (0.0, 0.0), "byol": (0.0, 0.2), "vicreg": (0.1, 0.1)}
AUGMENT_ON = ("cpu", "device")
AUGMENT_STREAM = 1 << 40
"""Added to :func:`~datamodules.epochs.epoch_seed` for the generator of an epoch's device augmentation parameters,
apart from the stream of its permutation."""
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE, META_FILE = "test_batch", "batches.meta"
FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
"""The files of torchvision's ``CIFAR10`` in ``FOLDER`` (its ``train_list``, ``test_list`` and ``meta``)."""


class DatasetNotFoundError(DataError):
    """The extracted ``cifar-10-batches-py`` folder is missing or incomplete."""


class DatasetChecksumError(DataError):
    """The CIFAR-10 files are there but fail torchvision's md5 check."""


class DatasetFileError(DataError):
    """A CIFAR-10 file that is truncated or not a pickled batch (read only with ``verify_checksums=False``)."""


UNREADABLE = (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError,
              ImportError)
"""What parsing a file that is not a pickled CIFAR-10 batch raises in torchvision's ``CIFAR10``."""


def unreadable(path: Path, keys: tuple[str, ...]) -> str | None:
    """Why ``path`` is not a pickled dict with ``keys`` (as torchvision reads it), or None if it is one."""
    try:
        with path.open("rb") as stream:
            entry = pickle.load(stream, encoding="latin1")
    except (OSError, *UNREADABLE) as error:
        return f"{type(error).__name__}: {error}"
    if not isinstance(entry, dict) or not set(keys) <= entry.keys():
        return f"not a pickled dict with {', '.join(keys)}"
    return None


def cifar10_split(root: str | Path, train: bool = True, download: bool = False, verify_checksums: bool = True) -> Any:
    """torchvision's ``CIFAR10`` (download, md5 check and parsing) with the md5 check optional:
    ``verify_checksums=False`` loads the files as they are (e.g. those of :func:`write_cifar10_batches`) with
    :class:`~datamodules.cifar10_unchecked.UncheckedCIFAR10`; a missing file still fails."""
    if verify_checksums:
        from torchvision.datasets import CIFAR10
    else:
        from datamodules.cifar10_unchecked import UncheckedCIFAR10 as CIFAR10
    return CIFAR10(root, train=train, download=download)


def eval_transform() -> Callable:
    """PIL image or uint8 tensor (..., 3, H, W) -> float32 ``(x / 255 - mean) / std``."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


def augmentation(recipe: ViewRecipe) -> Callable:
    """torchvision's transforms of one view (solo-learn's CIFAR recipe, module docstring) with ``recipe``'s values."""
    from torchvision.transforms import v2

    blur = [v2.RandomApply([v2.GaussianBlur(recipe.blur_kernel, recipe.blur_sigma)], p=recipe.blur_prob)]
    solarize = [v2.RandomSolarize(threshold=128, p=recipe.solarize_prob)]
    return v2.Compose([
        v2.RandomResizedCrop(32, scale=(recipe.crop_min_scale, 1.0), ratio=recipe.crop_ratio,
                             interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomApply([v2.ColorJitter(recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)],
                       p=recipe.jitter_prob),
        v2.RandomGrayscale(p=recipe.grayscale_prob),
        *(blur if recipe.blur_prob > 0 else []),
        *(solarize if recipe.solarize_prob > 0 else []),
        v2.RandomHorizontalFlip(p=recipe.flip_prob),
        *eval_transform().transforms,
    ])


def view_recipes(views: str, crop_min_scale: float, blur_prob: float = 0.0) -> tuple[ViewRecipe, ViewRecipe]:
    """The two views of ``views`` ("simclr" symmetric, "byol" asymmetric, "vicreg" symmetric with solarisation) as
    :class:`ViewRecipe`."""
    if views not in VIEWS:
        raise ValueError(f"views={views!r}; choose one of {tuple(VIEWS)}")
    first, second = (ViewRecipe(crop_min_scale=crop_min_scale, blur_prob=blur_prob, solarize_prob=p)
                     for p in VIEWS[views])
    return first, second


class TransformedSplit(Dataset):
    """Items ``(t_1(image), ..., t_k(image), label)`` of a parsed split: two views for training, one for evaluation.

    With ``seed`` set, an item is requested by the key ``epoch * len + index`` (:class:`EpochShuffleSampler`) and its
    augmentations draw from torch's RNG seeded by ``(seed, key)``: the views of image i in epoch k are a function of
    (seed, k, i) alone, whatever the worker, process count or resume point.
    """

    def __init__(self, split: Any, *transforms: Callable, seed: int | None = None) -> None:
        self.split, self.transforms, self.seed = split, transforms, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: int) -> tuple:
        if self.seed is None:
            return self._item(key)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, key)) & 0xFFFF_FFFF)  # torch's CPU generator keeps 32 bits
            return self._item(key % len(self.split))

    def _item(self, index: int) -> tuple:
        image, label = self.split[index]
        return (*(transform(image) for transform in self.transforms), label)


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` drawn with :func:`~datamodules.epochs.epoch_seed`, yielded as the keys
    ``epoch * n + index`` of :class:`TransformedSplit`.

    Lightning calls :meth:`set_epoch` before every epoch, so the order of epoch k is a function of (seed, k) only
    and a resumed run sees the same orders as an uninterrupted one. With ``world_size`` processes, process ``rank``
    takes its :func:`~datamodules.epochs.shard` of the permutation, so its b-th batch of size B is its share of the
    b-th batch of size ``B * world_size`` that one process would draw.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = shard(torch.randperm(self.n, generator=generator), self.rank, self.world_size)
        return iter((order + self.epoch * self.n).tolist())


@dataclass
class KeyBatch:
    """A training batch of ``augment_on="device"`` before it reaches the device: the sampler's keys
    ``epoch * n + index``."""

    keys: Tensor


class TrainKeys(Dataset):
    """The train split's keys as items: ``dataset[key] == key`` for the keys of :class:`EpochShuffleSampler`."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int) -> int:
        return key


def collate_keys(keys: list[int]) -> KeyBatch:
    return KeyBatch(torch.tensor(keys))


@register("data", "cifar10")
class CIFAR10DataModule(DataModule):
    """CIFAR-10 from ``<root>/cifar-10-batches-py``: two-view training batches ``[Views(view1, view2, labels)]`` and
    the test split (normalized only) for validation.

    With ``augment_on="device"`` the train loader yields :class:`KeyBatch` batches of sampler keys and
    :meth:`transfer_batch_to_device` makes their views on the device (:meth:`device_views`).

    For metric callbacks: ``num_classes``, :meth:`evaluation_inputs` and :meth:`readout_dataloaders`.
    ``download=True`` fetches the official archive in :meth:`prepare_data`; ``verify_checksums=False`` accepts files
    that fail torchvision's md5 check (see :func:`cifar10_split`).
    """

    @dataclass
    class Config(DataConfig):
        """torchvision's CIFAR-10 under ``root``; ``views`` simclr (both views one recipe), byol (solarisation on
        view 2) or vicreg (solarisation on both, p 0.1); random resized crops of scale ``crop_min_scale`` to 1;
        gaussian blur with ``blur_prob``; ``num_workers`` loader processes; ``augment_on`` cpu (torchvision in the
        workers) or device (batched on the training device)."""

        batch_size: int = 256
        root: str = "data/cifar10"
        download: bool = False
        verify_checksums: bool = True
        num_workers: int = 4
        views: str = "simclr"
        crop_min_scale: float = 0.08
        blur_prob: float = 0.0
        augment_on: str = "cpu"

        def provides(self) -> set[str]:
            return {"images", "labels"}

        def validate(self, prefix: str) -> None:
            super().validate(prefix)
            check_non_negative(f"{prefix}.num_workers", self.num_workers)
            check_choice(f"{prefix}.views", self.views, tuple(VIEWS))
            check_range(f"{prefix}.crop_min_scale", self.crop_min_scale, 0, 1, "(]")
            check_range(f"{prefix}.blur_prob", self.blur_prob, 0, 1, "[]")
            check_choice(f"{prefix}.augment_on", self.augment_on, AUGMENT_ON)

    num_classes = 10
    labelled_batches = True

    def __init__(self, root: str = "data/cifar10", download: bool = False, verify_checksums: bool = True,
                 batch_size: int = 256, num_workers: int = 4, views: str = "simclr", crop_min_scale: float = 0.08,
                 blur_prob: float = 0.0, augment_on: str = "cpu", seed: int = 1) -> None:
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on={augment_on!r}; choose one of {AUGMENT_ON}")
        self.root = Path(root).expanduser()
        self.download, self.verify_checksums = download, verify_checksums
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.augment_on = augment_on
        recipes = view_recipes(views, crop_min_scale, blur_prob)
        self.view_transforms = tuple(augmentation(recipe) for recipe in recipes)
        self.batched_views = BatchedViews(recipes, CIFAR10_MEAN, CIFAR10_STD)
        self.eval_transform = eval_transform()
        self._splits: dict[bool, Any] = {}
        self._on_device: tuple[torch.device, Tensor, Tensor] | None = None
        self._epoch_params: tuple[int, torch.device, tuple[ViewParams, ...]] | None = None

    @classmethod
    def from_config(cls, config: Config, seed: int) -> CIFAR10DataModule:
        return cls(root=config.root, download=config.download, verify_checksums=config.verify_checksums,
                   batch_size=config.batch_size, num_workers=config.num_workers, views=config.views,
                   crop_min_scale=config.crop_min_scale, blur_prob=config.blur_prob, augment_on=config.augment_on,
                   seed=seed)

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    def prepare_data(self) -> None:
        if self.download:
            self.check_root()
            try:
                cifar10_split(self.root, train=True, download=True, verify_checksums=self.verify_checksums)
            except (OSError, RuntimeError) as error:  # no network (URLError), a full disk, a corrupt archive
                reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
                raise DatasetNotFoundError(
                    f"downloading CIFAR-10 into {self.root.absolute()} failed ({reason}); retry on a machine with "
                    f"internet, or copy the extracted {FOLDER} folder there and set data.download=false") from None

    def check(self) -> None:
        """Without ``download``, load both splits now (a missing, corrupt or unreadable file is one line); with it,
        only check that ``root`` can hold the download."""
        self.check_root()
        if not self.download:
            self.split(train=True)
            self.split(train=False)

    def check_root(self) -> None:
        """``root`` and its ``cifar-10-batches-py`` are directories where they exist."""
        if self.root.exists() and not self.root.is_dir():
            raise DatasetNotFoundError(f"data.root={self.root} is a file, not a directory; set data.root to the "
                                       f"directory that holds {FOLDER} (or that data.download=true should fill)")
        if self.folder.exists() and not self.folder.is_dir():
            raise DatasetNotFoundError(f"{self.folder.absolute()} is a file, not the extracted {FOLDER} folder; "
                                       "delete it and set data.download=true, or copy the extracted folder there")

    def setup(self, stage: str) -> None:
        self.split(train=True)
        self.split(train=False)

    def split(self, train: bool) -> Any:
        """The parsed train or test split (PIL images, int labels), loaded once."""
        if train not in self._splits:
            self.check_root()
            missing = [name for name in FILES if not (self.folder / name).is_file()]
            if missing:
                raise DatasetNotFoundError(
                    f"CIFAR-10 not found: {self.folder.absolute()} has no {missing[0]}; set data.download=true on a "
                    f"machine with internet, or copy the extracted {FOLDER} folder there")
            try:
                self._splits[train] = cifar10_split(self.root, train=train, verify_checksums=self.verify_checksums)
            except RuntimeError as error:
                raise DatasetChecksumError(
                    f"CIFAR-10 files in {self.folder.absolute()} fail torchvision's md5 check (not the official "
                    "files): delete them and set data.download=true, or set data.verify_checksums=false to load them "
                    "as they are") from error
            except UNREADABLE as error:
                raise self.file_error(train, error) from None
        return self._splits[train]

    def file_error(self, train: bool, error: Exception) -> DatasetFileError:
        """The error for a split that torchvision could not parse, naming the first file that is not a batch."""
        batches = TRAIN_FILES if train else (TEST_FILE,)
        files = [(name, ("data", "labels")) for name in batches] + [(META_FILE, ("label_names",))]
        found = ((name, reason) for name, keys in files if (reason := unreadable(self.folder / name, keys)))
        name, reason = next(found, (None, f"{type(error).__name__}: {error}"))
        where = f"CIFAR-10 file {(self.folder / name).absolute()}" if name else f"a CIFAR-10 file in {self.folder}"
        return DatasetFileError(f"{where} is truncated or not a pickled batch ({reason}); delete "
                                f"{self.folder.absolute()} and set data.download=true to fetch the official files, "
                                "or regenerate them")

    def _loader(self, dataset: Dataset, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), **kwargs)

    def train_dataloader(self) -> DataLoader:
        """Two-view batches (:class:`KeyBatch` batches with ``augment_on="device"``); under DDP every process loads
        its share (see :class:`EpochShuffleSampler`)."""
        if self.augment_on == "device":
            n = len(self.split(train=True))
            return DataLoader(TrainKeys(n), batch_size=self.batch_size, sampler=EpochShuffleSampler(n, self.seed,
                              *self.world()), drop_last=True, collate_fn=collate_keys)
        dataset = TransformedSplit(self.split(train=True), *self.view_transforms, seed=self.seed)
        sampler = EpochShuffleSampler(len(dataset), self.seed, *self.world())
        return self._loader(dataset, self.batch_size, sampler=sampler, drop_last=True, collate_fn=collate_views,
                            persistent_workers=self.num_workers > 0)

    def transfer_batch_to_device(self, batch: KeyBatch | list[Any], device: torch.device) -> list[Any]:
        """A :class:`KeyBatch` becomes ``[device_views(keys, device)]``; other batches move as they are."""
        if isinstance(batch, KeyBatch):
            return [self.device_views(batch.keys, device)]
        return super().transfer_batch_to_device(batch, device)

    def device_views(self, keys: Tensor, device: torch.device) -> Views:
        """The views and labels of the train images that ``keys`` (``epoch * n + index``, one epoch) name, made on
        ``device`` from its uint8 copy of the split by :class:`~datamodules.gpu_augment.BatchedViews`.

        The parameters of a whole epoch are drawn at its first batch, one row per image of the split, on the CPU from
        a generator seeded with ``epoch_seed(seed, epoch) + AUGMENT_STREAM``; image i takes row i. So the parameters
        of image i in epoch k are a function of (seed, k, i), whatever the device, process count or resume point.
        """
        n = len(self.split(train=True))
        epoch = int(keys[0]) // n
        if self._on_device is None or self._on_device[0] != device:
            split = self.split(train=True)
            images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous().to(device)
            self._on_device = device, images, torch.as_tensor(split.targets).to(device)
        if self._epoch_params is None or self._epoch_params[:2] != (epoch, device):
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch) + AUGMENT_STREAM)
            params = tuple(p.to(device) for p in self.batched_views.sample(n, generator))
            self._epoch_params = epoch, device, params
        _, images, labels = self._on_device
        index = (keys % n).to(device, non_blocking=True)
        view1, view2 = self.batched_views.views(images[index], [p[index] for p in self._epoch_params[2]])
        return Views(view1, view2, labels[index])

    def val_dataloader(self) -> DataLoader:
        """The test split in file order; under DDP process ``rank`` takes images ``rank, rank + world_size, ...``."""
        rank, world_size = self.world()
        dataset = TransformedSplit(self.split(train=False), self.eval_transform)
        return self._loader(dataset, self.batch_size, sampler=range(rank, len(dataset), world_size),
                            persistent_workers=self.num_workers > 0)

    def readout_dataloaders(self, batch_size: int) -> tuple[DataLoader, DataLoader]:
        """(train, test) splits as ``(image, label)`` batches, normalized only, in file order."""
        train, test = (self._loader(TransformedSplit(self.split(train=t), self.eval_transform), batch_size)
                       for t in (True, False))
        return train, test

    def evaluation_inputs(self, num_samples: int) -> Tensor:
        """The first ``num_samples`` test images (fewer if the split is smaller), normalized, (N, 3, 32, 32) on CPU."""
        return self.eval_transform(self.first_test_images(num_samples)).as_subclass(Tensor).contiguous()

    def first_test_images(self, num_samples: int) -> Tensor:
        """The first ``num_samples`` test images as stored, uint8 (N, 3, 32, 32) on the CPU."""
        return torch.from_numpy(self.split(train=False).data[:num_samples]).permute(0, 3, 1, 2).contiguous()

    def evaluation_views(self, num_samples: int, views: int) -> Tensor:
        """``views`` training augmentations (:class:`~datamodules.gpu_augment.BatchedViews`, batched on the trainer's
        device) of each of the first ``num_samples`` test images, normalized: ``(n, views, 3, 32, 32)``."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        images = self.first_test_images(num_samples).to(device)
        generator = torch.Generator().manual_seed(self.seed + EVALUATION_VIEWS_STREAM)

        def pair() -> tuple[Tensor, ...]:
            params = [p.to(device) for p in self.batched_views.sample(len(images), generator)]
            return self.batched_views.views(images, params)

        return stacked_views(pair, views)


def write_cifar10_batches(root: str | Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write a random dataset in the layout of the official python version: ``<root>/cifar-10-batches-py`` with
    pickled ``data_batch_1..5`` (the train split, spread as evenly as possible), ``test_batch`` and ``batches.meta``.

    Each batch is a dict with ``data`` (uint8, N x 3072: the R, G and B 32x32 planes of each image), ``labels``
    (image i of a split has label i mod 10), ``batch_label`` and ``filenames``; ``batches.meta`` holds
    ``label_names``, ``num_cases_per_batch`` and ``num_vis``. Keys are ``str``: the official files are Python 2
    pickles whose ``str`` keys load as ``str`` under torchvision's ``encoding="latin1"``, while Python 3 ``bytes``
    keys would stay ``bytes`` and not parse. The files fail the md5 check; load them with ``verify_checksums=False``.
    Returns ``root``.
    """
    root = Path(root)
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def write(name: str, batch_label: str, indices: np.ndarray) -> None:
        labels = [int(i) % 10 for i in indices]
        batch = {"batch_label": batch_label, "labels": labels,
                 "data": rng.integers(0, 256, (len(indices), 3 * 32 * 32), dtype=np.uint8),
                 "filenames": [f"{CLASS_NAMES[label]}_s_{i:06d}.png" for i, label in zip(indices, labels)]}
        (folder / name).write_bytes(pickle.dumps(batch))

    train_batches = np.array_split(np.arange(n_train), len(TRAIN_FILES))
    for number, (name, indices) in enumerate(zip(TRAIN_FILES, train_batches), start=1):
        write(name, f"training batch {number} of {len(train_batches)}", indices)
    write(TEST_FILE, "testing batch 1 of 1", np.arange(n_test))
    meta = {"num_cases_per_batch": len(train_batches[0]), "label_names": list(CLASS_NAMES), "num_vis": 3 * 32 * 32}
    (folder / META_FILE).write_bytes(pickle.dumps(meta))
    return root
