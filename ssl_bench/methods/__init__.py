"""Self-supervised methods; importing this package registers them (one file each)."""

from ssl_bench.methods import (  # noqa: F401  (registers them)
    adaptive_infonce,
    barlow_twins,
    byol,
    directclr,
    dot_product,
    simclr,
    simsiam,
    vicreg,
)
from ssl_bench.methods.base import Method

__all__ = ["Method"]
