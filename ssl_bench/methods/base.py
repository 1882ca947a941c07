"""The shared base of every method: an objective over an encoder that one optimizer step minimises.

A method is a plain ``nn.Module`` (torch only); :class:`ssl_bench.train.lightning_module.SSLModule` is the one
LightningModule that trains any of them: it owns the optimizers, the learning-rate schedule, the online probe and the
update loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ssl_bench.batch import Views
from ssl_bench.config import MethodConfig


class Method(nn.Module):
    """An encoder ``f`` (made by ``make_encoder``, so methods with a second network can draw another) and named
    heads (``nn.Identity`` where the config has none).

    Subclasses implement :meth:`training_loss`; methods with several optimizers also :meth:`parameter_groups` and
    :meth:`optimizer_index`. Callbacks read the model through :meth:`representations` and ``encoder``.
    """

    Config = MethodConfig
    find_unused_parameters = False
    """Whether some optimizer steps leave trained parameters without gradients (DDP must then look for them)."""
    batchable = True
    """Whether :meth:`training_loss` is a function of the parameters, buffers and views alone (no state kept across
    calls, no shapes that depend on values), so that an ensemble may ``vmap`` it over stacked members."""

    def __init__(self, config: MethodConfig, make_encoder: Callable[[], nn.Module], **heads: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.encoder = make_encoder()
        for name, head in heads.items():
            self.add_module(name, head)
        self._stepped_modules: list[nn.Module] | None = None

    @classmethod
    def from_config(cls, config: MethodConfig, make_encoder: Callable[[], nn.Module], width: int) -> Method:
        """The method for backbones of output ``width`` made by ``make_encoder``."""
        return cls(config, make_encoder, width)

    def representations(self, x: Tensor) -> dict[str, Tensor]:
        """``backbone``: the encoder's output; ``projector``: the embedding the loss sees."""
        features = self.encoder(x)
        projector = getattr(self, "projector", None)
        return {"backbone": features, "projector": features if projector is None else projector(features)}

    def training_loss(self, index: int, views: Views) -> tuple[Tensor, Tensor]:
        """The loss of mini-batch ``index`` of a batch and the backbone features of ``view1`` (for the probe)."""
        raise NotImplementedError

    def parameter_groups(self) -> list[list[dict[str, Any]]]:
        """Parameter groups per optimizer; by default one optimizer over every parameter."""
        return [[dict(params=list(self.parameters()))]]

    def optimizer_index(self, index: int) -> int:
        """The optimizer that steps on mini-batch ``index`` of a batch."""
        return 0

    def after_optimizer_step(self, index: int, progress: float) -> None:
        """Called after every optimizer step, at training ``progress`` in [0, 1]: every submodule with an
        ``after_optimizer_step`` (e.g. a weight-normalized sparse encoder) runs it."""
        if self._stepped_modules is None:
            self._stepped_modules = [m for m in self.modules() if m is not self and hasattr(m, "after_optimizer_step")]
        for module in self._stepped_modules:
            module.after_optimizer_step()

    def epoch_metrics(self) -> dict[str, float | Tensor]:
        """Scalars the method logs at the end of an epoch, beside the loss and learning rate."""
        return {}
