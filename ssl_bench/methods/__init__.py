"""Method registry: ``method.name`` -> LightningModule, built from a validated :class:`RunConfig`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from ssl_bench.config import RunConfig
from ssl_bench.methods.adaptive_infonce import AdaptiveInfoNCE
from ssl_bench.methods.base import SSLMethod
from ssl_bench.methods.byol import BYOL
from ssl_bench.methods.directclr import DirectCLR
from ssl_bench.methods.simclr import SimCLR
from ssl_bench.methods.simsiam import SimSiam
from ssl_bench.nets import heads
from ssl_bench.nets.resnet import RESNETS, ResNetBackbone
from ssl_bench.nets.sparse import SparseEncoder, warm_start_noise

METHODS: dict[str, type[SSLMethod]] = {"simclr": SimCLR, "simsiam": SimSiam, "byol": BYOL, "directclr": DirectCLR,
                                       "adaptive_infonce": AdaptiveInfoNCE}

__all__ = ["METHODS", "SSLMethod", "SimCLR", "SimSiam", "BYOL", "DirectCLR", "AdaptiveInfoNCE", "build_method"]


def encoder_factory(cfg: RunConfig, datamodule: L.LightningDataModule) -> Callable[[], nn.Module]:
    """A factory of backbones; every encoder it makes is drawn independently (seeded by ``cfg.seed``)."""
    enc, data = cfg.encoder, cfg.data
    if enc.name != "sparse":
        return lambda: ResNetBackbone(enc.name, cifar_stem=enc.cifar_stem)
    generator = torch.Generator().manual_seed(cfg.seed)

    def make_sparse_encoder() -> SparseEncoder:
        encoder = SparseEncoder(datamodule.input_dim, enc.width, enc.layers, enc.batch_norm, enc.activation, enc.bias)
        encoder.initialise(generator, enc.init_std, data.d, zero_bias=enc.bias_init == "zero")
        if enc.warm_start:
            noise = warm_start_noise(data.p, enc.warm_start_noise, enc.warm_start_c)
            encoder.warm_start(datamodule.dictionary, noise, generator)
        encoder.normalise_weights(enc.weight_norm)
        return encoder

    return make_sparse_encoder


def build_method(cfg: RunConfig, datamodule: L.LightningDataModule) -> SSLMethod:
    """Instantiate ``cfg.method`` with its encoder factory, heads and the online probe (when the data has labels)."""
    m = cfg.method
    make_encoder = encoder_factory(cfg, datamodule)
    width = RESNETS[cfg.encoder.name] if cfg.encoder.name != "sparse" else cfg.encoder.width
    embedding_dim = width if m.projector == "none" else (m.projector_dim or width)
    common: dict[str, Any] = dict(
        optim=cfg.optim, num_classes=datamodule.num_classes if datamodule.labelled_batches else None,
        batch_size=cfg.data.batch_size,
        weight_norm=cfg.encoder.weight_norm, log_every_n_epochs=cfg.trainer.log_every_n_epochs,
        projector=heads.projector(m.projector, width, m.projector_hidden_dim, m.projector_dim, m.projector_layers,
                                  m.projector_output_bn))
    predictor = heads.predictor(m.predictor, embedding_dim, m.predictor_hidden_dim, m.predictor_init)
    if m.name == "simclr":
        return SimCLR(make_encoder, temperature=m.temperature, **common)
    if m.name == "simsiam":
        return SimSiam(make_encoder, predictor=predictor, **common)
    if m.name == "directclr":
        return DirectCLR(make_encoder, temperature=m.temperature, d0=m.directclr_dim, **common)
    if m.name == "adaptive_infonce":
        return AdaptiveInfoNCE(make_encoder, embedding_dim=embedding_dim, temperatures=m.temperatures or
                               [m.temperature], groups=m.temperature_groups, learn_temperature=m.learn_temperature,
                               normalize=m.normalize, standardize=m.standardize, **common)
    return BYOL(make_encoder, predictor=predictor, target_update=m.target_update, ema_momentum=m.ema_momentum,
                ema_momentum_end=m.ema_momentum_end, **common)
