"""CIFAR-10 datamodule on small files in the official layout, parsed by torchvision; ResNet backbones."""

from __future__ import annotations

import pickle

import lightning as L
import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image
from torch import nn

from datamodules.cifar10 import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10DataModule,
    DatasetChecksumError,
    DatasetNotFoundError,
    EpochShuffleSampler,
    augmentation,
    cifar10_split,
    view_recipes,
    write_cifar10_batches,
)
from ssl_bench.batch import Views
from ssl_bench.errors import DataError
from ssl_bench.nets import ResNetBackbone
from ssl_bench.train.lightning_module import DataModuleAdapter

N_TRAIN, N_TEST = 40, 20


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_cifar10_batches(tmp_path_factory.mktemp("cifar"), N_TRAIN, N_TEST, seed=0)


def datamodule(root, **kwargs) -> CIFAR10DataModule:
    settings = {"root": str(root), "verify_checksums": False, "batch_size": 8, "num_workers": 0} | kwargs
    return CIFAR10DataModule(**settings)


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(CIFAR10_STD).view(3, 1, 1) + torch.tensor(CIFAR10_MEAN).view(3, 1, 1)


# ------------------------------------------------------------------------------------------------ files on disk


def test_torchvision_parses_the_written_files(root):
    folder = root / "cifar-10-batches-py"
    batches = [pickle.loads((folder / f"data_batch_{k}").read_bytes(), encoding="latin1") for k in range(1, 6)]
    assert [len(b["labels"]) for b in batches] == [8] * 5
    assert all(b["data"].dtype == np.uint8 and b["data"].shape == (8, 3072) for b in batches)
    train = cifar10_split(root, train=True, verify_checksums=False)
    test = cifar10_split(root, train=False, verify_checksums=False)
    assert len(train) == N_TRAIN and len(test) == N_TEST
    assert train.targets == [i % 10 for i in range(N_TRAIN)] and test.targets == [i % 10 for i in range(N_TEST)]
    assert train.classes[:2] == ["airplane", "automobile"] and len(train.classes) == 10
    # torchvision's HWC image 9 is row 1 of data_batch_2 (R, G, B planes)
    np.testing.assert_array_equal(train.data[9], batches[1]["data"][1].reshape(3, 32, 32).transpose(1, 2, 0))
    image, label = train[9]
    assert isinstance(image, Image.Image) and image.size == (32, 32) and label == 9
    other = cifar10_split(write_cifar10_batches(root.parent / "other", N_TRAIN, N_TEST, seed=1), verify_checksums=False)
    assert not np.array_equal(other.data, train.data)


def test_md5_check_rejects_the_written_files_unless_disabled(root):
    with pytest.raises(RuntimeError, match="corrupted"):
        cifar10_split(root, train=True, verify_checksums=True)
    with pytest.raises(DatasetChecksumError, match="verify_checksums=false") as error:
        datamodule(root, verify_checksums=True).setup("fit")
    assert isinstance(error.value, DataError) and "\n" not in str(error.value)
    dm = datamodule(root)
    dm.setup("fit")
    assert len(dm.split(train=True)) == N_TRAIN


def test_missing_dataset_raises_one_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        datamodule(tmp_path / "nowhere").setup("fit")
    message = str(error.value)
    assert isinstance(error.value, DataError) and isinstance(error.value, FileNotFoundError)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "data.download=true" in message and "\n" not in message


def test_a_missing_batch_file_fails_even_without_checksums(tmp_path):
    root = write_cifar10_batches(tmp_path, 10, 5)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        datamodule(root).setup("fit")


def test_prepare_data_downloads_through_torchvision_only_when_asked(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename=None, md5=None):
        calls.append((url, download_root, md5))
        write_cifar10_batches(download_root, 10, 5)

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", fake_download)
    datamodule(tmp_path).prepare_data()
    assert calls == []
    dm = datamodule(tmp_path, download=True)
    dm.prepare_data()
    assert calls == [(torchvision.datasets.cifar.CIFAR10.url, tmp_path, torchvision.datasets.cifar.CIFAR10.tgz_md5)]
    dm.setup("fit")
    assert len(dm.split(train=True)) == 10


# ------------------------------------------------------------------------------------------------ augmentations


def test_train_batches_hold_two_augmented_views_and_labels(root):
    dm = datamodule(root, batch_size=16)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == N_TRAIN // 16  # drop_last
    [views] = batches[0]  # one mini-batch per training batch
    assert isinstance(views, Views)
    view1, view2, labels = views.view1, views.view2, views.labels
    assert view1.shape == view2.shape == (16, 3, 32, 32)
    assert view1.dtype == view2.dtype == torch.float32 and labels.dtype == torch.int64
    assert not torch.allclose(view1, view2)
    assert abs(view1.mean().item()) < 0.5 and abs(view2.mean().item()) < 0.5
    order = list(loader.sampler)
    assert labels.tolist() == [order[i] % 10 for i in range(16)]


@pytest.mark.parametrize("views,solarized", [("simclr", (0.0, 0.0)), ("byol", (0.0, 0.2)), ("vicreg", (0.1, 0.1))])
def test_only_the_second_byol_view_is_solarized(views, solarized):
    """On a white image, jitter keeps every pixel in [0.6, 1] (brightness 0.6..1.4, clipped; contrast, saturation
    and hue leave grey unchanged) and solarization maps it to [0, 0.4]."""
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    torch.manual_seed(0)
    n = 400
    for transform, p in zip(map(augmentation, view_recipes(views, 0.08)), solarized):
        raw = torch.stack([unnormalize(transform(white)) for _ in range(n)])
        dark = raw.flatten(1).amax(dim=1) < 0.45
        assert (raw.flatten(1).amin(dim=1)[~dark] > 0.55).all()
        assert abs(dark.float().mean().item() - p) < 0.08


def test_unknown_views_rejected(root):
    with pytest.raises(ValueError, match="byol"):
        datamodule(root, views="moco")


# ------------------------------------------------------------------------------------------------ order


def order(seed: int, epoch: int, sampler: EpochShuffleSampler | None = None) -> list[int]:
    sampler = sampler or EpochShuffleSampler(N_TRAIN, seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    reused = EpochShuffleSampler(N_TRAIN, 1)
    epochs = [order(1, k, reused) for k in range(3)]
    assert epochs == [order(1, k) for k in range(3)]  # a fresh (resumed) sampler repeats epoch k
    assert sorted(epochs[0]) == list(range(N_TRAIN))
    assert epochs[0] != epochs[1] != epochs[2]
    assert order(2, 0) != epochs[0]


def test_sampler_keys_carry_the_epoch():
    keys = order(1, 2)
    assert sorted(k - 2 * N_TRAIN for k in keys) == list(range(N_TRAIN))


@pytest.mark.parametrize("world_size", [2, 3])
def test_processes_share_each_global_batch(world_size):
    batch = 4
    whole = order(5, 1, EpochShuffleSampler(N_TRAIN, 5))
    shards = [order(5, 1, EpochShuffleSampler(N_TRAIN, 5, rank, world_size)) for rank in range(world_size)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == N_TRAIN // world_size
    for b in range(len(shards[0]) // batch):
        global_batch = whole[b * batch * world_size:(b + 1) * batch * world_size]
        union = [key for shard in shards for key in shard[b * batch:(b + 1) * batch]]
        assert sorted(union) == sorted(global_batch)


def test_views_are_a_function_of_seed_epoch_and_image(root):
    dm = datamodule(root, seed=4)
    dm.setup("fit")
    dataset = dm.train_dataloader().dataset
    state = torch.random.get_rng_state()
    first, again = dataset[3], dataset[3]
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], first[1])  # the two views differ
    next_epoch = dataset[3 + N_TRAIN]
    assert next_epoch[2] == first[2] and not torch.equal(next_epoch[0], first[0])
    other_seed = datamodule(root, seed=5)
    other_seed.setup("fit")
    assert not torch.equal(other_seed.train_dataloader().dataset[3][0], first[0])


class _RecordLabels(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.labels: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        [views] = batch
        if batch_idx == 0:
            self.labels.append([])
        self.labels[-1] += views.labels.tolist()
        return (self.weight * views.view1.mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_sets_the_epoch_of_the_sampler(root):
    dm, module = datamodule(root, batch_size=8, seed=3), _RecordLabels()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=DataModuleAdapter(dm))
    expected = [[(i % N_TRAIN) % 10 for i in order(3, k)] for k in range(2)]
    assert module.labels == expected and expected[0] != expected[1]


# ------------------------------------------------------------------------------------------------ evaluation


def test_evaluation_inputs_are_the_first_test_images_normalized(root):
    dm = datamodule(root)
    inputs = dm.evaluation_inputs(5)
    assert inputs.shape == (5, 3, 32, 32) and inputs.device.type == "cpu" and type(inputs) is torch.Tensor
    assert torch.equal(inputs, datamodule(root).evaluation_inputs(5))
    images = dm.split(train=False).data[:5]
    np.testing.assert_allclose(unnormalize(inputs).permute(0, 2, 3, 1).numpy(), images / 255.0, atol=1e-5)
    assert dm.evaluation_inputs(100).shape[0] == N_TEST


def test_readout_and_validation_loaders_cover_both_splits_unaugmented(root):
    dm = datamodule(root)
    dm.setup("fit")
    train, test = dm.readout_dataloaders(batch_size=16)
    for loader, split, n in ((train, True, N_TRAIN), (test, False, N_TEST)):
        images, labels = map(torch.cat, zip(*loader))
        assert images.shape == (n, 3, 32, 32) and labels.tolist() == [i % 10 for i in range(n)]
        np.testing.assert_allclose(unnormalize(images).permute(0, 2, 3, 1).numpy(),
                                   dm.split(train=split).data / 255.0, atol=1e-5)
    val_images, val_labels = map(torch.cat, zip(*dm.val_dataloader()))
    assert torch.equal(val_images, dm.evaluation_inputs(N_TEST)) and val_labels.tolist() == labels.tolist()


# ------------------------------------------------------------------------------------------------ backbones


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_backbone_features(name, dim):
    torch.manual_seed(0)
    backbone = ResNetBackbone(name).eval()
    features = backbone(torch.randn(2, 3, 32, 32))
    assert backbone.output_dim == dim and features.shape == (2, dim)
    assert isinstance(backbone.net.fc, nn.Identity)


def test_cifar_stem_is_a_stride_one_3x3_conv_without_max_pool():
    cifar, imagenet = ResNetBackbone("resnet18"), ResNetBackbone("resnet18", cifar_stem=False)
    conv = cifar.net.conv1
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.bias is None
    assert isinstance(cifar.net.maxpool, nn.Identity)
    assert imagenet.net.conv1.kernel_size == (7, 7) and isinstance(imagenet.net.maxpool, nn.MaxPool2d)
    x = torch.randn(1, 3, 32, 32)
    stem = nn.Sequential(cifar.net.conv1, cifar.net.bn1, cifar.net.relu, cifar.net.maxpool)
    assert stem(x).shape[-2:] == (32, 32)


def test_unknown_resnet_name():
    with pytest.raises(ValueError, match="resnet18.*resnet50"):
        ResNetBackbone("resnet34")


def test_config_builds_the_datamodule_and_a_resnet_with_the_online_probe(root):
    from ssl_bench.config.compose import load
    from ssl_bench.train.build import build_data, build_module

    cfg = load("cifar10/simclr", [f"data.root={root}", "data.verify_checksums=false", "data.batch_size=4",
                                  "data.num_workers=0", "data.views=byol", "encoder.cifar_stem=false"])
    data = build_data(cfg)
    assert isinstance(data, CIFAR10DataModule) and data.batch_size == 4 and data.labelled_batches
    assert data.root == root and not data.verify_checksums
    module = build_module(cfg, data)
    encoder = module.method.encoder
    assert isinstance(encoder, ResNetBackbone) and encoder.output_dim == 512
    assert encoder.net.conv1.kernel_size == (7, 7)
    assert module.probe is not None and module.probe.out_features == 10
