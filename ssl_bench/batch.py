"""The one training-batch type: two views of the same inputs, with labels where the data has them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Views:
    """One mini-batch of two views ``view1``, ``view2`` (B x ...) and optional ``labels`` (B).

    Every training batch that a datamodule hands to a method is a ``list[Views]``: one mini-batch for image data,
    a whole epoch of mini-batches for synthetic data (so Lightning's per-batch machinery runs once per epoch). The
    method takes one optimizer step per entry.
    """

    view1: Tensor
    view2: Tensor
    labels: Tensor | None = None

    def to(self, device) -> Views:
        return Views(self.view1.to(device, non_blocking=True), self.view2.to(device, non_blocking=True),
                     None if self.labels is None else self.labels.to(device, non_blocking=True))


@dataclass(frozen=True)
class StepInfo:
    """One optimizer step, as step hooks see it: ``index`` counts the run's optimizer steps from 0, ``epoch`` and
    ``index_in_batch`` place it (the position of its mini-batch in a multi-mini-batch batch), ``optimizer`` is the
    index of the optimizer that stepped, ``loss`` the detached loss it minimised and ``lr`` the learning rate of that
    optimizer's first parameter group for the step."""

    index: int
    epoch: int
    index_in_batch: int
    optimizer: int
    loss: Tensor
    lr: float
