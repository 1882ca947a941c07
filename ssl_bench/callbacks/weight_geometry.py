"""How far the first layer is from the ground truth in the shape Pokle et al. 2022's theorems describe: a (signed)
permutation of the atoms (Thm. 1), the span of the initial weights (Thm. 2), the identity (Thm. 3), and its norm
(NCL-linear's collapse, Table 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ssl_bench.callbacks.base import CadenceConfig, Callback
from ssl_bench.ops.frozen import frozen
from ssl_bench.ops.metrics import best_matching, cosine_matrix
from ssl_bench.registry import register


def cosines(rows: Tensor, columns: Tensor) -> Tensor:
    """:func:`ssl_bench.ops.metrics.cosine_matrix` on the CPU (the assignment runs in scipy)."""
    return cosine_matrix(rows.cpu(), columns)


def matching(cos: Tensor) -> dict[str, float]:
    """Permutation statistics of a cosine matrix ``C`` (k x l) between items (rows) and targets (columns):

    ``best_min = min_i max_j |C_ij|`` (the worst item's best target); ``covered = |{argmax_j |C_ij| : i}|`` (how
    many distinct targets the items' best matches hit); ``perm_cos = max_pi mean_i |C_i,pi(i)|`` over one-to-one
    assignments pi of min(k, l) items to distinct targets (Hungarian algorithm). With unit rows in the targets'
    span and k = l, ``perm_cos = 1`` exactly when the rows are a signed permutation of the targets, and
    ``||C - S P||_F^2 = 2 k (1 - perm_cos)`` for the nearest signed permutation ``S P`` (Thm. 1 (b)).
    """
    a = cos.abs()
    rows, cols = best_matching(a)
    return {"best_min": a.max(dim=1).values.min().item(), "covered": float(a.argmax(dim=1).unique().numel()),
            "perm_cos": a[rows, cols].mean().item()}


def identity_distance(weight: Tensor, dictionary: Tensor) -> float:
    """``||C - I||_F`` for ``C = cos(W_i., M_.j)`` (m x d) and ``I`` the m x d identity: 0 exactly when neuron i is
    atom i for every i < min(m, d) and the other entries vanish (Thm. 3: ``W -> I`` for ``M = I``, m = d)."""
    c = cosines(weight, dictionary)
    return torch.linalg.matrix_norm(c - torch.eye(*c.shape, dtype=c.dtype)).item()


def span_residual(weight: Tensor, initial: list[Tensor], dictionary: Tensor) -> float:
    """The relative part of ``A = W M`` outside ``span{W_0 M : W_0 in initial}`` (Thm. 2):
    ``||A - sum_k a_k W_0k M||_F / ||A||_F`` with the least-squares coefficients ``a`` (Frobenius inner product).

    Thm. 2: gradient descent on the linear non-contrastive loss with weight decay (Eq. 13) keeps
    ``W_t^o M = C_1 W_0^o M + C_2 (W_0^o M + W_0^t M)``, so the residual stays 0 for the online ``W_t^o`` given the
    initial online and target weights ``W_0^o``, ``W_0^t``.
    """
    m = dictionary.detach().double().cpu()
    a = (weight.detach().double().cpu() @ m).flatten()
    basis = torch.stack([(w0.detach().double().cpu() @ m).flatten() for w0 in initial], dim=1)
    coefficients = torch.linalg.lstsq(basis, a.unsqueeze(1)).solution
    return ((a - (basis @ coefficients).squeeze(1)).norm() / a.norm().clamp_min(1e-300)).item()


def atom_codes(encoder: nn.Module, dictionary: Tensor) -> Tensor:
    """The encoder's output for every noiseless atom ``x = M_.j`` (d x m), in eval mode without gradients; every
    submodule is put back in its previous train/eval mode."""
    with frozen(encoder):
        return encoder(dictionary.T.to(encoder.first_layer_weight))


def geometry(encoder: nn.Module, dictionary: Tensor, initial: list[Tensor]) -> dict[str, float]:
    """Every logged value (see :class:`WeightGeometry`) of ``encoder`` against ``dictionary`` (p x d)."""
    weight = encoder.first_layer_weight
    neurons = matching(cosines(weight, dictionary))
    codes = matching(cosines(atom_codes(encoder, dictionary), torch.eye(encoder.output_dim, dtype=torch.float64)))
    values = {"weights/norm": weight.detach().norm().item(), "weights/neuron_maxcos_min": neurons["best_min"],
              "weights/atoms_covered": neurons["covered"], "weights/perm_cos": neurons["perm_cos"],
              "weights/identity_distance": identity_distance(weight, dictionary),
              "codes/axis_cos_min": codes["best_min"], "codes/axes_used": codes["covered"],
              "codes/perm_cos": codes["perm_cos"]}
    if initial:
        values["weights/span_residual"] = span_residual(weight, initial, dictionary)
    return values


@register("callback", "weight_geometry")
class WeightGeometry(Callback):
    """Logs, every ``every_n_epochs`` epochs and at the end, for the encoder's first-layer weight ``W`` (m x p) and
    the datamodule's dictionary ``M`` (p x d):

    - ``weights/norm``: ``||W||_F`` (Table 2: NCL-linear's weights are driven to 0);
    - ``weights/neuron_maxcos_min``, ``weights/atoms_covered``, ``weights/perm_cos``: :func:`matching` of
      ``cos(W_i., M_.j)``, neurons against atoms (Eq. 12 read per neuron; Thm. 1: several neurons on one atom leave
      ``atoms_covered < d``);
    - ``codes/axis_cos_min``, ``codes/axes_used``, ``codes/perm_cos``: :func:`matching` of the codes ``f(M_.j)``
      of the atoms against the output axes (Thm. 1 (b): the contrastive optima map the atoms to distinct axes,
      ``ReLU(W) = P``);
    - ``weights/identity_distance``: :func:`identity_distance` (Thm. 3);
    - ``weights/span_residual``: :func:`span_residual` against the initial weights of the encoder and, where the
      method has a second network ``target`` (alternating non-contrastive learning), of its first layer (Thm. 2).

    The initial weights are copied when training starts and kept across a resume.
    """

    @dataclass
    class Config(CadenceConfig):
        needs = ("dictionary", "first_layer_weight")

    initial: list[Tensor] | None = None

    def on_train_start(self, trainer: Any, module: Any) -> None:
        if self.initial is None:
            self.initial = [net.first_layer_weight.detach().cpu().clone() for net in self.networks(module)]

    @staticmethod
    def networks(module: Any) -> list[nn.Module]:
        """The encoder, and the method's ``target`` network where it has one with a first-layer weight."""
        target = getattr(module.method, "target", None)
        return [module.method.encoder, *([target] if hasattr(target, "first_layer_weight") else [])]

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self.due(trainer):
            return
        values = geometry(module.method.encoder, trainer.datamodule.dictionary, self.initial or [])
        for key, value in values.items():
            module.log(key, value)

    def state_dict(self) -> dict[str, Any]:
        return {"initial": self.initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial = state.get("initial")
