"""Checkpoints written whole: a kill or a full disk while one is written leaves the previous complete file."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins import TorchCheckpointIO

from ssl_bench.rundir import replace_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints (a Trainer ``plugins`` entry), each serialised in memory and then
    written through :func:`ssl_bench.rundir.replace_file`: a temporary file beside it, fsynced, renamed over it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with replace_file(Path(path), "wb") as file:
            file.write(buffer.getbuffer())
