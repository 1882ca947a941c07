"""The encoders' activations, one vocabulary: a name means the same function in every encoder that offers it, and
the identity is ``linear`` everywhere (a linear encoder, a linear activation).

Besides the element-wise ones (:data:`ELEMENTWISE`), three read a parameter of their layer and are computed by the
encoder: ``leaky_relu``, ``max(h, s h)`` with the encoder's negative slope ``s``; ``symmetric_relu``,
``relu(h - b) - relu(-h - b)`` with the neuron's bias ``b`` as threshold (Pokle et al. 2022, Eq. 14); and
``symmetric_relu_official``, ``relu(y) - relu(2 b - y)`` for ``y = BN(W a + b)`` (their official code).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ssl_bench.config import check_choice


def identity(h: Tensor) -> Tensor:
    """``h`` itself: the ``linear`` activation."""
    return h


def cube(h: Tensor) -> Tensor:
    """``h^3`` element-wise (Wen & Li 2022's activation)."""
    return h.pow(3)


IDENTITY = "linear"
"""The identity's name: the one every encoder that offers it accepts (there is no other name for it)."""

ELEMENTWISE: dict[str, Callable[[Tensor], Tensor]] = {
    IDENTITY: identity, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "cubic": cube,
}
"""The activations that are a function of the pre-activation alone."""

OFFERED: dict[str, tuple[str, ...]] = {
    "sparse": ("linear", "relu", "symmetric_relu", "symmetric_relu_official"),
    "mlp": ("leaky_relu", "relu", "linear"),
    "patch_conv": ("cubic", "relu"),
    "two_layer": ("linear", "tanh", "relu", "sigmoid"),
}
"""The activations each encoder (by its registered name) offers."""


def check_activation(key: str, encoder: str, activation: str) -> None:
    """Refuse an activation that ``encoder`` does not offer, in one line naming those it does."""
    check_choice(key, activation, OFFERED[encoder])
