"""Batched device augmentation: the same parameter distributions as the torchvision pipeline, the same views for the
same parameters, independent per image, and a function of (seed, epoch, image) in the datamodule."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from datamodules.cifar10 import (
    CIFAR10DataModule,
    KeyBatch,
    augmentation,
    view_recipes,
    write_cifar10_batches,
)
from datamodules.gpu_augment import ViewParams, ViewRecipe, augment, color_jitter
from ssl_bench.config import ConfigError
from ssl_bench.train.lightning_module import DataModuleAdapter

N_CPU, N_BATCHED = 2000, 20000
KS_C = 1.95  # two-sample Kolmogorov-Smirnov critical value at alpha = 0.001
Z = 4.0  # two-proportion tolerance in standard errors


def ks(a: Tensor, b: Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``max_x |F_a(x) - F_b(x)|``."""
    points = torch.cat([a, b]).double().sort().values
    cdf = [torch.searchsorted(x.double().sort().values, points, right=True) / len(x) for x in (a, b)]
    return float((cdf[0] - cdf[1]).abs().max())


def assert_same_distribution(a: Tensor, b: Tensor, name: str) -> None:
    limit = KS_C * math.sqrt((len(a) + len(b)) / (len(a) * len(b)))
    assert ks(a, b) < limit, f"{name}: KS {ks(a, b):.4f} >= {limit:.4f}"


def assert_same_rate(hits_a: int, n_a: int, hits_b: int, n_b: int, name: str) -> None:
    pooled = (hits_a + hits_b) / (n_a + n_b)
    limit = Z * math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n_a + 1 / n_b))
    assert abs(hits_a / n_a - hits_b / n_b) <= limit, f"{name}: {hits_a / n_a:.4f} vs {hits_b / n_b:.4f}"


def cpu_parameters(transform: v2.Compose, n: int) -> dict[str, list]:
    """The parameters torchvision draws in ``n`` calls of ``transform`` on a 32 x 32 image, recorded from each
    transform's ``make_params`` (a RandomApply'd or p < 1 transform draws only when it applies)."""
    drawn: dict[str, list] = {}

    def record(name: str, step: v2.Transform) -> None:
        make_params = step.make_params

        def recorded(flat_inputs: list) -> dict:
            params = make_params(flat_inputs)
            drawn.setdefault(name, []).append(params)
            return params
        step.make_params = recorded

    for step in transform.transforms:
        inner = step.transforms[0] if isinstance(step, v2.RandomApply) else step
        record(type(inner).__name__, inner)
    image = Image.new("RGB", (32, 32), (120, 60, 200))
    torch.manual_seed(0)
    for _ in range(n):
        transform(image)
    return drawn


def test_parameter_distributions_match_torchvision():
    """Crop scale, aspect ratio and offsets, jitter factors and order, and every rate of the view with the most
    operations (BYOL's second view, with blur), torchvision's draws against the batched ones."""
    recipe = view_recipes("byol", 0.08, blur_prob=0.5)[1]
    cpu = cpu_parameters(augmentation(recipe), N_CPU)
    batched = recipe.sample(N_BATCHED, torch.Generator().manual_seed(0))

    crops = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in cpu["RandomResizedCrop"]])
    for name, column in (("scale", lambda b: b[:, 2] * b[:, 3] / 1024.0), ("ratio", lambda b: b[:, 3] / b[:, 2]),
                         ("top", lambda b: b[:, 0].double()), ("left", lambda b: b[:, 1].double())):
        assert_same_distribution(column(crops), column(batched.box), f"crop {name}")

    jitter = cpu["ColorJitter"]
    assert_same_rate(len(jitter), N_CPU, int(batched.jitter.sum()), N_BATCHED, "jitter")
    keys = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
    applied = batched.factors[batched.jitter]
    for k, key in enumerate(keys):
        assert_same_distribution(torch.tensor([p[key] for p in jitter]), applied[:, k], key)
    cpu_order = torch.stack([p["fn_idx"] for p in jitter])
    for position in range(4):
        for op in range(4):
            assert_same_rate(int((cpu_order[:, position] == op).sum()), len(jitter),
                             int((batched.order[:, position] == op).sum()), N_BATCHED, f"op {op} at {position}")

    for name, flag in (("RandomGrayscale", batched.grayscale), ("GaussianBlur", batched.blur),
                       ("RandomSolarize", batched.solarize), ("RandomHorizontalFlip", batched.flip)):
        assert_same_rate(len(cpu[name]), N_CPU, int(flag.sum()), N_BATCHED, name)
    sigma = torch.tensor([p["sigma"][0] for p in cpu["GaussianBlur"]])
    assert_same_distribution(sigma, batched.sigma[batched.blur], "blur sigma")


def test_a_wrong_distribution_is_detected():
    """The tolerances reject a recipe that differs from the CPU pipeline's (smaller crops, more flips)."""
    cpu = cpu_parameters(augmentation(view_recipes("simclr", 0.08)[0]), N_CPU)
    crops = torch.tensor([[p["height"], p["width"]] for p in cpu["RandomResizedCrop"]])
    other = ViewRecipe(crop_min_scale=0.2, flip_prob=0.6).sample(N_BATCHED, torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError, match="scale"):
        assert_same_distribution(crops[:, 0] * crops[:, 1] / 1024.0, other.box[:, 2] * other.box[:, 3] / 1024.0,
                                 "scale")
    with pytest.raises(AssertionError, match="flip"):
        assert_same_rate(len(cpu["RandomHorizontalFlip"]), N_CPU, int(other.flip.sum()), N_BATCHED, "flip")


def images(n: int, seed: int = 0) -> Tensor:
    """Smooth random uint8 images (N, 3, 32, 32)."""
    coarse = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return (nn.functional.interpolate(coarse, size=32, mode="bilinear") * 255).round().to(torch.uint8)


def torchvision_view(image: Tensor, p: ViewParams, kernel: int) -> Tensor:
    """One view through torchvision's functional ops on a PIL image with the parameters ``p`` of one image."""
    pil = F.resized_crop(F.to_pil_image(image), *p.box.tolist(), [32, 32], F.InterpolationMode.BICUBIC)
    if p.jitter:
        for op in p.order.tolist():
            adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)[op]
            pil = adjust(pil, float(p.factors[op]))
    if p.grayscale:
        pil = F.rgb_to_grayscale(pil, 3)
    if p.blur:
        pil = F.gaussian_blur(pil, [kernel, kernel], [float(p.sigma)] * 2)
    if p.solarize:
        pil = F.solarize(pil, 128)
    if p.flip:
        pil = F.horizontal_flip(pil)
    return F.pil_to_tensor(pil).float() / 255


def test_views_match_torchvision_for_the_same_parameters():
    """Crop, resize and flip agree with PIL's bicubic resampling to its uint8 rounding; each jitter operation agrees
    with torchvision's tensor kernel; the whole view, where PIL rounds after every operation and quantises hue,
    stays within a few levels on average."""
    x = images(64)
    recipe = ViewRecipe(jitter_prob=0.0, grayscale_prob=0.0)
    geometric = recipe.sample(64, torch.Generator().manual_seed(1))
    expected = torch.stack([torchvision_view(x[i], geometric[i], 13) for i in range(64)])
    assert (augment(x, geometric, recipe) - expected).abs().max() * 255 < 1.5

    recipe = ViewRecipe(jitter_prob=1.0)
    params = recipe.sample(64, torch.Generator().manual_seed(2))
    floats = x.float() / 255
    for op, adjust in enumerate((F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)):
        single = params[:]
        single.order = torch.tensor([op, *(k for k in range(4) if k != op)]).expand(64, 4)
        single.factors = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(64, 1)
        single.factors[:, op] = params.factors[:, op]
        expected = torch.stack([adjust(floats[i], float(single.factors[i, op])) for i in range(64)])
        assert (color_jitter(floats, single) - expected).abs().max() < 1e-3, adjust.__name__

    recipe = ViewRecipe(blur_prob=0.5, solarize_prob=0.5)
    params = recipe.sample(64, torch.Generator().manual_seed(3))
    expected = torch.stack([torchvision_view(x[i], params[i], recipe.blur_kernel) for i in range(64)])
    assert (augment(x, params, recipe) - expected).abs().mean() * 255 < 2.5


def test_each_image_draws_its_own_parameters():
    x = images(1).expand(256, -1, -1, -1)
    recipe = ViewRecipe(blur_prob=0.5, solarize_prob=0.5)
    params = recipe.sample(256, torch.Generator().manual_seed(0))
    views = augment(x, params, recipe).flatten(1)
    assert len(torch.unique(views, dim=0)) == 256
    assert len(torch.unique(params.box, dim=0)) > 200 and len(torch.unique(params.order, dim=0)) == 24
    for flag in (params.jitter, params.grayscale, params.blur, params.solarize, params.flip):
        assert 0 < int(flag.sum()) < 256


def test_generator_seeds_the_parameters():
    recipe = ViewRecipe()
    first, again, other = (recipe.sample(100, torch.Generator().manual_seed(s)) for s in (7, 7, 8))
    assert all(torch.equal(a, b) for a, b in zip(vars(first).values(), vars(again).values()))
    assert not torch.equal(first.box, other.box)


# ------------------------------------------------------------------------------------------------ datamodule

N_TRAIN = 48


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_cifar10_batches(tmp_path_factory.mktemp("cifar"), N_TRAIN, 16, seed=0)


def device_data(root, seed: int = 1, rank: int = 0, world_size: int = 1, batch_size: int = 8) -> CIFAR10DataModule:
    data = CIFAR10DataModule(root=str(root), verify_checksums=False, batch_size=batch_size, num_workers=0,
                             views="byol", augment_on="device", seed=seed)
    data.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
    data.setup("fit")
    return data


def epoch_views(data: CIFAR10DataModule, epoch: int) -> list:
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [data.transfer_batch_to_device(batch, torch.device("cpu"))[0] for batch in loader]


def test_device_batches_are_two_normalized_channels_last_views(root):
    data = device_data(root)
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, KeyBatch) and batch.keys.shape == (8,)
    [views] = data.transfer_batch_to_device(batch, torch.device("cpu"))
    assert views.view1.shape == views.view2.shape == (8, 3, 32, 32) and views.view1.dtype == torch.float32
    assert views.view1.is_contiguous(memory_format=torch.channels_last)
    assert views.labels.tolist() == [int(k) % 10 for k in batch.keys]
    assert not torch.equal(views.view1, views.view2)
    assert abs(views.view1.mean().item()) < 0.5 and 0.5 < views.view1.std().item() < 1.5


def test_a_seeded_epoch_is_reproducible(root):
    first = epoch_views(device_data(root), 1)
    again = epoch_views(device_data(root), 1)  # a fresh (resumed) datamodule
    assert len(first) == N_TRAIN // 8
    assert all(torch.equal(a.view1, b.view1) and torch.equal(a.view2, b.view2) for a, b in zip(first, again))
    assert not torch.equal(epoch_views(device_data(root), 2)[0].view1, first[0].view1)
    assert not torch.equal(epoch_views(device_data(root, seed=2), 1)[0].view1, first[0].view1)


def test_processes_make_their_share_of_each_global_batch(root):
    """Under DDP the views of an image do not depend on the process count: each process's b-th batch is its
    share of the b-th global batch, views included."""
    whole = epoch_views(device_data(root), 0)
    shards = [epoch_views(device_data(root, rank=rank, world_size=2, batch_size=4), 0) for rank in range(2)]
    for b, global_batch in enumerate(whole):
        for rank in range(2):
            assert torch.equal(shards[rank][b].view1, global_batch.view1[rank::2])
            assert torch.equal(shards[rank][b].view2, global_batch.view2[rank::2])


def test_unknown_augment_on_is_one_config_error():
    config = CIFAR10DataModule.Config(augment_on="gpu")
    with pytest.raises(ConfigError, match="data.augment_on") as error:
        config.validate("data")
    assert "\n" not in str(error.value)


class _RecordViews(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.labels: list[int] = []

    def training_step(self, batch, batch_idx):
        [views] = batch
        assert views.view1.is_contiguous(memory_format=torch.channels_last)
        self.labels += views.labels.tolist()
        return (self.weight * views.view1.mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trains_on_device_views(root):
    data, module = device_data(root), _RecordViews()
    data.trainer = None
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=DataModuleAdapter(data))
    expected = [key % N_TRAIN % 10 for epoch in range(2) for key in epoch_keys(data, epoch)]
    assert module.labels == expected


def epoch_keys(data: CIFAR10DataModule, epoch: int) -> list[int]:
    sampler = data.train_dataloader().sampler
    sampler.set_epoch(epoch)
    return list(sampler)
