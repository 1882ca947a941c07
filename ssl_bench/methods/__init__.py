"""Method registry: ``method.name`` -> LightningModule, built from a validated :class:`RunConfig`."""

from __future__ import annotations

import torch

from datamodules.sparse_coding import SparseCodingDataModule
from ssl_bench.config import RunConfig
from ssl_bench.methods.base import SSLMethod
from ssl_bench.methods.byol import BYOL
from ssl_bench.methods.simclr import SimCLR
from ssl_bench.methods.simsiam import SimSiam
from ssl_bench.nets.sparse import SparseEncoder, warm_start_noise

METHODS: dict[str, type[SSLMethod]] = {"simclr": SimCLR, "simsiam": SimSiam, "byol": BYOL}

__all__ = ["METHODS", "SSLMethod", "SimCLR", "SimSiam", "BYOL", "build_method"]


def build_method(cfg: RunConfig, datamodule: SparseCodingDataModule) -> SSLMethod:
    """Instantiate ``cfg.method`` with an encoder factory; every encoder it makes is drawn independently."""
    enc, data = cfg.encoder, cfg.data
    generator = torch.Generator().manual_seed(cfg.seed)

    def make_encoder() -> SparseEncoder:
        encoder = SparseEncoder(datamodule.input_dim, enc.width, enc.layers, enc.batch_norm, enc.activation, enc.bias)
        encoder.initialise(generator, enc.init_std, data.d, zero_bias=enc.bias_init == "zero")
        if enc.warm_start:
            noise = warm_start_noise(data.p, enc.warm_start_noise, enc.warm_start_c)
            encoder.warm_start(datamodule.dictionary, noise, generator)
        encoder.normalise_weights(enc.weight_norm)
        return encoder

    m = cfg.method
    common = dict(optim=cfg.optim, weight_norm=enc.weight_norm, log_every_n_epochs=cfg.trainer.log_every_n_epochs)
    if m.name == "simclr":
        return SimCLR(make_encoder, temperature=m.temperature, projector=m.projector, **common)
    if m.name == "simsiam":
        return SimSiam(make_encoder, **common)
    return BYOL(make_encoder, predictor=m.predictor, target_update=m.target_update, ema_momentum=m.ema_momentum,
                **common)
