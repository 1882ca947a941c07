"""Encoders and heads; importing this package registers them."""

from ssl_bench.nets import (  # noqa: F401  (each registers its parts)
    heads, inverse, mlp, patch_conv, resnet, sparse, two_layer)
from ssl_bench.nets.resnet import RESNETS, ResNetBackbone
from ssl_bench.nets.sparse import SparseEncoder, SparseLayer

__all__ = ["RESNETS", "ResNetBackbone", "SparseEncoder", "SparseLayer"]
