"""Reading a checkpoint that ``ssl-bench fit`` wrote, with one-line errors for anything else (torch only).

Checkpoints travel between people and cluster directories, so loading one never runs code: only tensors and plain
data are unpickled (torch's weights-only unpickler); a file with other pickled objects is refused before loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssl_bench.errors import ConfigError


def load_weights(path: Path) -> Any:
    """The object saved at ``path``, unpickled by torch's weights-only unpickler (tensors and plain data: no code
    runs); a one-line :class:`ConfigError` naming ``trainer.resume=path`` when the file holds pickled objects of
    other classes or is no file that ``torch.save`` wrote."""
    key = f"trainer.resume={path}"
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001  (whatever the scan raises: the file is not a torch.save archive)
        foreign = []
    if foreign:
        raise ConfigError(f"{key} holds pickled objects other than tensors and plain data ({', '.join(foreign)}), "
                          "which could run code when loaded; only checkpoints written by ssl-bench fit can be resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (whatever torch.load raises: the file is not a checkpoint)
        raise ConfigError(f"{key} is not a readable checkpoint ({type(err).__name__}); point it to a last.ckpt that "
                          "ssl-bench fit wrote") from None


def read_checkpoint(path: Path, expected: dict[str, Tensor], fix: str, prefix: str = "") -> dict[str, Any]:
    """The Lightning checkpoint at ``path`` (named by ``trainer.resume``, read by :func:`load_weights`) whose
    ``state_dict`` entries under ``prefix`` have the keys and shapes of ``expected``; a one-line
    :class:`ConfigError` otherwise, ending in ``fix`` when it holds another model."""
    key = f"trainer.resume={path}"
    if not path.is_file():
        raise ConfigError(f"{key} is not a file; point it to a checkpoints/last.ckpt of a run directory, or use "
                          "trainer.resume=auto with run_dir=PATH")
    checkpoint = load_weights(path)
    if not isinstance(checkpoint, dict) or not {"state_dict", "global_step"} <= checkpoint.keys():
        raise ConfigError(f"{key} is not a Lightning checkpoint; point it to a last.ckpt that ssl-bench fit wrote")
    wanted = {k: tuple(v.shape) for k, v in expected.items()}
    found = {k.removeprefix(prefix): tuple(getattr(v, "shape", ())) for k, v in checkpoint["state_dict"].items()
             if k.startswith(prefix)}
    if wanted != found:
        differing = sorted(k for k in wanted.keys() | found.keys() if wanted.get(k) != found.get(k))
        raise ConfigError(f"{key} holds another model ({len(differing)} parameters differ, e.g. {differing[0]}); "
                          f"{fix}")
    return checkpoint
