"""The empirical neural tangent kernel of a network's outputs, and how far it is from Lemma 1's block-diagonal form
(Esser et al. 2023, Lemma 1 and Remark 1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev


def output_ntk(model: nn.Module, inputs: Tensor) -> Tensor:
    """The empirical NTK ``Theta[i, j, a, b] = <d f_i(x_a) / d theta, d f_j(x_b) / d theta>`` (k x k x n x n) of
    ``model``'s k outputs on the n rows of ``inputs``, over its parameters that require gradients, in float64.

    It is the kernel of the gradient the training takes: parameters a network re-parametrises in its forward pass
    (the Grassmannian projection of ``encoder.constraint=orthogonal``, the normalisation of ``scaled``) enter through
    the forward pass, as in training. The model's train/eval mode is left as it is."""
    parameters = {name: parameter.detach().double() for name, parameter in model.named_parameters()
                  if parameter.requires_grad}
    fixed = {name: tensor.detach().double() if tensor.is_floating_point() else tensor
             for name, tensor in [*model.named_parameters(), *model.named_buffers()] if name not in parameters}
    names, x = list(parameters), inputs.detach().double()

    def outputs(trained: dict[str, Tensor]) -> Tensor:
        return functional_call(model, {**fixed, **trained}, (x,))

    jacobians = jacrev(outputs)(parameters)  # name -> (n, k, *shape)
    n, k = len(x), jacobians[names[0]].shape[1]
    jacobian = torch.cat([jacobians[name].reshape(n, k, -1) for name in names], dim=-1)
    return torch.einsum("aip,bjp->ijab", jacobian, jacobian)


def cross_output_ratio(ntk: Tensor) -> float:
    """``sqrt(sum_{i != j} ||Theta_ij||_F^2 / sum_i ||Theta_ii||_F^2)``: the size of the blocks that couple two
    outputs against the blocks of each output with itself. Lemma 1: 0 for a linear model and for a kernel machine,
    and for a network in the infinite-width limit, where ``Theta_ij = 1{i = j} K``."""
    squares = ntk.square().sum(dim=(2, 3))
    diagonal = squares.diagonal().sum()
    return ((squares.sum() - diagonal) / diagonal).sqrt().item()


def diagonal_spread(ntk: Tensor) -> float:
    """``sqrt(sum_i ||Theta_ii - Theta_bar||_F^2 / (k ||Theta_bar||_F^2))`` with ``Theta_bar`` the mean of the k
    diagonal blocks: how far the outputs' own kernels are from one shared ``K`` (Lemma 1: 0 in the limit, so every
    output follows the same dynamics, Remark 1 and Prop. 1)."""
    blocks = ntk.diagonal(dim1=0, dim2=1).movedim(-1, 0)  # k x n x n
    mean = blocks.mean(dim=0)
    return ((blocks - mean).square().sum() / (len(blocks) * mean.square().sum())).sqrt().item()


def kernel_drift(ntk: Tensor, initial: Tensor) -> float:
    """``||Theta_t - Theta_0||_F / ||Theta_0||_F``: how far the kernel moved from its initialisation (wide networks'
    kernels stay constant during training, Liu, Zhu & Belkin 2020, which the paper cites to carry Lemma 1 through
    training)."""
    return ((ntk - initial).norm() / initial.norm()).item()
