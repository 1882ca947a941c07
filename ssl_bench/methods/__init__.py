"""Self-supervised methods; importing this package registers them (one file each)."""

from ssl_bench.methods import adaptive_infonce, byol, directclr, simclr, simsiam  # noqa: F401  (registers them)
from ssl_bench.methods.base import Method

__all__ = ["Method"]
