"""Batched two-view augmentation of uint8 images on any device, with independent random parameters per image.

:class:`ViewRecipe` holds one view's distribution; :meth:`ViewRecipe.sample` draws the parameters of N images from a
``torch.Generator`` (:class:`ViewParams`, the same quantities that torchvision's transforms draw per call) and
:func:`augment` applies them to an (N, 3, H, W) uint8 batch in one pass of tensor code, in the order of solo-learn's
``CifarTransform``: random resized crop, colour jitter (its four operations in a random order per image), grayscale,
gaussian blur, solarisation, horizontal flip. Crop and resize reproduce PIL's bicubic resampling, the other
operations torchvision's tensor kernels; pixels stay float32 in [0, 1] throughout, where PIL (the CPU pipeline) rounds
to uint8 after every operation and works on hue in steps of 1/255 of a turn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

GRAY = (0.299, 0.587, 0.114)
"""PIL's ``convert("L")`` weights (ITU-R 601-2), used by its grayscale, contrast and saturation operations."""
CROP_TRIALS = 10


@dataclass(frozen=True)
class ViewRecipe:
    """One view's augmentation: RandomResizedCrop(scale=(crop_min_scale, 1), ratio=crop_ratio), ColorJitter(
    brightness, contrast, saturation, hue) with ``jitter_prob``, RandomGrayscale(``grayscale_prob``), GaussianBlur(
    ``blur_kernel``, sigma uniform in ``blur_sigma``) with ``blur_prob``, RandomSolarize(0.5 on [0, 1]) with
    ``solarize_prob``, RandomHorizontalFlip(``flip_prob``). Defaults: solo-learn's CIFAR view."""

    crop_min_scale: float = 0.08
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 13
    solarize_prob: float = 0.0
    flip_prob: float = 0.5

    def factor_ranges(self) -> tuple[tuple[float, float], ...]:
        """torchvision's ColorJitter ranges: ``[max(0, 1 - v), 1 + v]`` for brightness, contrast and saturation,
        ``[-hue, hue]`` for hue."""
        return (*((max(0.0, 1 - v), 1 + v) for v in (self.brightness, self.contrast, self.saturation)),
                (-self.hue, self.hue))

    def sample(self, n: int, generator: torch.Generator, size: tuple[int, int] = (32, 32)) -> ViewParams:
        """The parameters of ``n`` images of ``size`` (H, W), drawn on the generator's device.

        Crop: as torchvision's ``RandomResizedCrop.make_params``, up to 10 trials of area ``H W s``,
        ``s ~ U(crop_min_scale, 1)``, and aspect ratio ``r = exp(U(log r_0, log r_1))``, ``w = round(sqrt(H W s r))``,
        ``h = round(sqrt(H W s / r))``; the first trial with ``0 < w <= W``, ``0 < h <= H`` is placed at a uniform
        integer offset, and with none the central crop of the ratio range is used. Every other parameter is one
        uniform draw per image: a Bernoulli flag, a uniform factor, or a uniformly random order (argsort of
        uniforms) of the four jitter operations.
        """
        height, width = size
        device = generator.device

        def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
            return torch.rand(shape, generator=generator, device=device, dtype=torch.float64) * (high - low) + low

        area = height * width * uniform(n, CROP_TRIALS, low=self.crop_min_scale)
        ratio = uniform(n, CROP_TRIALS, low=math.log(self.crop_ratio[0]), high=math.log(self.crop_ratio[1])).exp()
        w, h = (area * ratio).sqrt().round().long(), (area / ratio).sqrt().round().long()
        valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = valid.long().argmax(dim=1, keepdim=True)
        found = valid.any(dim=1)
        fallback_w, fallback_h = self.central_crop(height, width)
        w = torch.where(found, w.gather(1, first).squeeze(1), fallback_w)
        h = torch.where(found, h.gather(1, first).squeeze(1), fallback_h)
        offset = uniform(n, 2)
        top = torch.where(found, (offset[:, 0] * (height - h + 1)).floor().long(), (height - h) // 2)
        left = torch.where(found, (offset[:, 1] * (width - w + 1)).floor().long(), (width - w) // 2)
        factors = torch.stack([uniform(n, low=low, high=high) for low, high in self.factor_ranges()], dim=1)
        return ViewParams(
            box=torch.stack([top, left, h, w], dim=1), jitter=uniform(n) < self.jitter_prob,
            order=uniform(n, 4).argsort(dim=1), factors=factors.float(), grayscale=uniform(n) < self.grayscale_prob,
            blur=uniform(n) < self.blur_prob, sigma=uniform(n, low=self.blur_sigma[0], high=self.blur_sigma[1]).float(),
            solarize=uniform(n) < self.solarize_prob, flip=uniform(n) < self.flip_prob)

    def central_crop(self, height: int, width: int) -> tuple[int, int]:
        """torchvision's fallback crop (w, h): the whole image, narrowed to the nearest end of the ratio range."""
        low, high = min(self.crop_ratio), max(self.crop_ratio)
        if width / height < low:
            return width, round(width / low)
        if width / height > high:
            return round(height * high), height
        return width, height


@dataclass
class ViewParams:
    """Per-image parameters of one view (leading dimension N): crop ``box`` (top, left, height, width); ``jitter``
    applied; ``order`` (N, 4) of the jitter operations (0 brightness, 1 contrast, 2 saturation, 3 hue) and their
    ``factors`` (N, 4); ``grayscale``; ``blur`` with ``sigma``; ``solarize``; ``flip``."""

    box: Tensor
    jitter: Tensor
    order: Tensor
    factors: Tensor
    grayscale: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor
    flip: Tensor

    def __getitem__(self, index: Tensor | slice) -> ViewParams:
        return ViewParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: torch.device | str) -> ViewParams:
        return ViewParams(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})


def cubic(t: Tensor, a: float = -0.5) -> Tensor:
    """PIL's bicubic filter: ``(a + 2)|t|^3 - (a + 3)|t|^2 + 1`` for ``|t| < 1``, ``a|t|^3 - 5a|t|^2 + 8a|t| - 4a``
    for ``1 <= |t| < 2``, 0 beyond (``a = -0.5``)."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t < 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def resize_matrix(start: Tensor, length: Tensor, size_in: int, size_out: int) -> Tensor:
    """(N, size_out, size_in) matrices that crop ``[start, start + length)`` of an axis and resize it to
    ``size_out`` as PIL's bicubic resampling does: output ``o`` samples the crop at ``c = (o + 0.5) s`` with
    ``s = length / size_out``, weight ``cubic((x - c + 0.5) / max(s, 1))`` for crop pixel ``x``, normalised over the
    crop's pixels."""
    scale = (length / size_out).unsqueeze(1).unsqueeze(2)
    centre = (torch.arange(size_out, device=start.device) + 0.5).view(1, -1, 1) * scale
    x = torch.arange(size_in, device=start.device).view(1, 1, -1) - start.view(-1, 1, 1)
    weights = cubic((x - centre + 0.5) / scale.clamp(min=1))
    weights = torch.where((x >= 0) & (x < length.view(-1, 1, 1)), weights, torch.zeros_like(weights))
    return weights / weights.sum(dim=2, keepdim=True)


def blur_matrix(sigma: Tensor, kernel: int, size: int) -> Tensor:
    """(N, size, size) matrices of torchvision's gaussian blur along one axis: kernel ``exp(-t^2 / (2 sigma^2))``
    for ``t = -(k-1)/2 .. (k-1)/2``, normalised, with reflect padding (index -1 reads 1, ``size`` reads
    ``size - 2``)."""
    t = torch.arange(kernel, device=sigma.device) - (kernel - 1) / 2
    weights = torch.exp(-0.5 * (t / sigma.unsqueeze(1)) ** 2)
    weights = weights / weights.sum(dim=1, keepdim=True)
    source = torch.arange(size, device=sigma.device).unsqueeze(1) + t.long()
    source = source.abs()
    source = torch.where(source >= size, 2 * (size - 1) - source, source)
    matrix = torch.zeros(len(sigma), size, size, device=sigma.device)
    return matrix.scatter_add_(2, source.expand(len(sigma), -1, -1), weights.unsqueeze(1).expand(-1, size, -1))


def gray(x: Tensor) -> Tensor:
    """``0.299 R + 0.587 G + 0.114 B`` of (N, 3, H, W), keeping the channel dimension."""
    r, g, b = x.unbind(dim=1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """torchvision's ``adjust_hue`` per image: RGB -> HSV, ``h <- (h + shift) mod 1``, HSV -> RGB.

    With ``M``, ``m`` the largest and smallest channel and ``c = M - m``: ``6h`` is ``(G - B) / c``, ``2 + (B - R) / c``
    or ``4 + (R - G) / c`` where ``M`` is R, G or B (0 where ``c = 0``); back, channel ``n`` (5, 3, 1 for R, G, B) is
    ``M - c clip(min(k, 4 - k), 0, 1)`` with ``k = (n + 6h) mod 6``.
    """
    r, g, b = x.unbind(dim=1)
    high, low = x.amax(dim=1), x.amin(dim=1)
    chroma = high - low
    red, green = high == r, high == g
    numerator = torch.where(red, g - b, torch.where(green, b - r, r - g))
    sector = torch.where(red, 0.0, torch.where(green, 2.0, 4.0))
    hue6 = numerator / torch.where(chroma > 0, chroma, torch.ones_like(chroma)) + sector + 6 * shift.view(-1, 1, 1)
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + hue6.unsqueeze(1), 6)
    return high.unsqueeze(1) - chroma.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1)


def blend(x: Tensor, op: Tensor, factor: Tensor) -> Tensor:
    """Per image, brightness (``op`` 0), contrast (1) or saturation (2) with ``factor``: ``clip(f x + (1 - f) d, 0, 1)``
    with the degenerate image ``d`` = 0, the mean of the grayscale image, or the grayscale image. ``f = 1`` leaves
    an image unchanged."""
    luma = gray(x)
    degenerate = torch.where((op == 1).view(-1, 1, 1, 1), luma.mean(dim=(2, 3), keepdim=True), luma)
    degenerate = torch.where((op == 0).view(-1, 1, 1, 1), torch.zeros_like(luma), degenerate)
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * degenerate).clamp(0, 1)


def color_jitter(x: Tensor, params: ViewParams) -> Tensor:
    """The four jitter operations of each image in its own ``order``, skipped where ``jitter`` is off.

    With ``p`` the position of the hue shift in an image's order: the :func:`blend` operations at positions before
    ``p``, then :func:`shift_hue` (by 0 where ``jitter`` is off), then the blends after ``p``; a blend that is not
    the image's turn runs with factor 1.
    """
    hue_at = params.order.argmax(dim=1)  # the position of operation 3
    for after in (False, True):
        for position in range(4):
            op = params.order[:, position]
            turn = params.jitter & ((position > hue_at) if after else (position < hue_at))
            factor = params.factors.gather(1, op.unsqueeze(1)).squeeze(1)
            x = blend(x, op, torch.where(turn, factor, torch.ones_like(factor)))
        if not after:
            x = shift_hue(x, torch.where(params.jitter, params.factors[:, 3], torch.zeros_like(params.factors[:, 3])))
    return x


def augment(images: Tensor, params: ViewParams, recipe: ViewRecipe, size: int = 32) -> Tensor:
    """One view of uint8 images (N, 3, H, W) with the ``params`` drawn from ``recipe``: float32 (N, 3, size, size)
    in [0, 1], on the images' device.

    Crop, resize and flip are one matrix product per image, ``clip(R_y x R_x^T)`` with :func:`resize_matrix` (the
    columns of ``R_x`` reversed for a flipped image: flipping commutes with every colour operation and the symmetric
    blur); then :func:`color_jitter`, grayscale ``x <- gray(x)``, blur ``B x B^T`` (:func:`blur_matrix`) and
    solarisation ``x <- 1 - x`` where ``x >= 0.5`` (128 of 255 after rounding), each where its flag is on; a step
    whose probability in ``recipe`` is 0 is skipped.
    """
    top, left, height, width = params.box.unbind(dim=1)
    rows = resize_matrix(top, height, images.shape[2], size)
    columns = resize_matrix(left, width, images.shape[3], size)
    columns = torch.where(params.flip.view(-1, 1, 1), columns.flip(1), columns)
    x = (rows.unsqueeze(1) @ images.float().div(255) @ columns.transpose(1, 2).unsqueeze(1)).clamp(0, 1)
    x = color_jitter(x, params)
    x = torch.where(params.grayscale.view(-1, 1, 1, 1), gray(x).expand_as(x), x)
    if recipe.blur_prob > 0:
        blur = blur_matrix(params.sigma, recipe.blur_kernel, size).unsqueeze(1)
        x = torch.where(params.blur.view(-1, 1, 1, 1), blur @ x @ blur.transpose(2, 3), x)
    if recipe.solarize_prob > 0:
        x = torch.where(params.solarize.view(-1, 1, 1, 1) & (x >= 0.5), 1 - x, x)
    return x


class BatchedViews:
    """One view per recipe of every ``size`` x ``size`` image, each ``(augment(x) - mean) / std`` in channels-last
    memory format. ``sample(n, generator)`` draws the views' parameters for ``n`` images; ``views(images, params)``
    applies them."""

    def __init__(self, recipes: Sequence[ViewRecipe], mean: Sequence[float], std: Sequence[float],
                 size: int = 32) -> None:
        self.recipes, self.size = tuple(recipes), size
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def sample(self, n: int, generator: torch.Generator) -> tuple[ViewParams, ...]:
        return tuple(recipe.sample(n, generator, (self.size, self.size)) for recipe in self.recipes)

    def views(self, images: Tensor, params: Sequence[ViewParams]) -> tuple[Tensor, ...]:
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return tuple(((augment(images, p, recipe, self.size) - mean) / std)
                     .contiguous(memory_format=torch.channels_last) for recipe, p in zip(self.recipes, params))
