"""Encoders and heads."""

from ssl_bench.nets.resnet import RESNETS, ResNetBackbone
from ssl_bench.nets.sparse import SparseEncoder, SparseLayer

__all__ = ["RESNETS", "ResNetBackbone", "SparseEncoder", "SparseLayer"]
