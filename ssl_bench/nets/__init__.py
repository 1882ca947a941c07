"""Encoders and heads."""

from ssl_bench.nets.sparse import SparseEncoder, SparseLayer

__all__ = ["SparseEncoder", "SparseLayer"]
