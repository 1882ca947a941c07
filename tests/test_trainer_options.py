"""trainer.channels_last and trainer.compile: the model as trained, and checkpoints that keep their keys."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import TINY

from datamodules.cifar10 import write_cifar10_batches
from ssl_bench.config.compose import load
from ssl_bench.train.fit import fit


class Seen(L.Callback):
    """What the model looked like when training started, and whether the encoder's last forward call ran compiled."""

    compiled: bool | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        encoder = pl_module.method.encoder
        self.channels_last = encoder.net.conv1.weight.is_contiguous(memory_format=torch.channels_last) \
            if hasattr(encoder, "net") else None
        encoder.register_forward_hook(lambda *_: setattr(self, "compiled", torch.compiler.is_compiling()))


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_trains_the_resnet_in_channels_last(tmp_path, channels_last):
    root = write_cifar10_batches(tmp_path / "cifar", 16, 8, seed=0)
    cfg = load("cifar10/simclr", [f"data.root={root}", "data.verify_checksums=false", "data.batch_size=8",
                                  "data.num_workers=0", "trainer.max_epochs=1", "trainer.progress=none", "logger=none",
                                  "trainer.accelerator=cpu", "~callbacks.readout", "~callbacks.spectrum", f"trainer.channels_last={channels_last}",
                                  f"run_dir={tmp_path / 'run'}"])
    seen = Seen()
    assert fit(cfg, extra_callbacks=[seen])["status"] == "finished"
    assert seen.channels_last is channels_last


@pytest.mark.slow
def test_compile_compiles_the_encoder_and_keeps_checkpoint_keys(tmp_path):
    overrides = [*TINY, "trainer.checkpoint_every_n_epochs=1"]
    seen = Seen()
    assert fit(load("quickstart", [*overrides, "trainer.compile=true", f"run_dir={tmp_path / 'c'}"]),
               extra_callbacks=[seen])["status"] == "finished"
    assert seen.compiled is True
    plain = Seen()
    fit(load("quickstart", [*overrides, f"run_dir={tmp_path / 'e'}"]), extra_callbacks=[plain])
    assert plain.compiled is False
    keys = [set(torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
            for d in ("c", "e")]
    assert keys[0] == keys[1]
