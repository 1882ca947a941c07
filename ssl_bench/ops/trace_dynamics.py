"""The closed-form output dynamics of orthogonality-constrained SSL (Esser, Nath & Ghoshdastidar 2023, Thms. 2-3).

For the linear network ``F = V W X`` (outputs ``F``, k x n, one column per data point) trained by gradient flow on the
trace loss ``L = tr(F C F^T)`` (Eq. 8) with ``W^T W = I`` and ``V V^T = I`` kept on the Grassmannian, and whitened data
``X X^T = I``, the outputs follow Eq. (9),

    dF/dt = -4 F C~ + 2 F C~ F^T F + 2 F F^T F C~,   C~ = P C P,  P = X^T X,

where ``P`` projects onto the data's row space (``C~ = C`` when X is square, the paper's statement). Its Euler step of
size ``eta`` (Eq. 12) is the solver that runs beside gradient descent (Eq. 11); the dimension of ``W``, the network's
width, does not appear in it. Theorem 3 (k = 1): ``F`` goes to 0 when ``C~`` is positive definite, and to a unit
eigenvector of the smallest eigenvalue when one is negative.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ssl_bench.errors import ConfigError
from ssl_bench.ops.losses import trace_loss


def projected_trace_matrix(c: Tensor, inputs: Tensor) -> Tensor:
    """``C~ = P C P`` with ``P = D D^T`` for the data matrix ``D`` (n x d, rows the data points, ``D^T D = I``)."""
    d = inputs.to(c.dtype)
    return d @ (d.T @ c @ d) @ d.T


def output_velocity(f: Tensor, c: Tensor) -> Tensor:
    """Eq. (9): ``dF/dt = -4 F C + 2 F C F^T F + 2 F F^T F C`` for outputs ``f`` (k x n) and ``c`` (n x n)."""
    fc = f @ c
    return -4 * fc + 2 * fc @ f.T @ f + 2 * f @ (f.T @ fc)


def euler_step(f: Tensor, c: Tensor, lr: float) -> Tensor:
    """Eq. (12): ``F_{t+1} = F_t + lr dF/dt``, the discretised dynamics with the learning rate as the step."""
    return f + lr * output_velocity(f, c)


def bottom_eigenspace_share(f: Tensor, eigenvectors: Tensor, k: int | None = None) -> float:
    """The share of ``||F||_F^2`` in the span of the eigenvectors of the ``k`` (default: F's rows) smallest
    eigenvalues of a symmetric ``C``, given ``eigenvectors`` as ``torch.linalg.eigh(C)`` returns them (columns, in
    increasing order of their eigenvalues): ``||F U_k||_F^2 / ||F||_F^2``, 1 when the outputs are the bottom
    eigenvectors (Theorem 3 and Prop. 3's optimum), NaN for ``F = 0``."""
    vectors, f = eigenvectors.double(), f.double()
    return ((f @ vectors[:, : k or f.shape[0]]).pow(2).sum() / f.pow(2).sum()).item()


def gradient_step(network: Any, inputs: Tensor, c: Tensor, lr: float) -> None:
    """Eq. (11): one gradient step of size ``lr`` on ``tr(F C F^T)`` for the outputs ``F = network(inputs)^T`` of
    every data point, then the network's projection back onto its constraint set (``after_optimizer_step``)."""
    network.zero_grad(set_to_none=True)
    trace_loss(network(inputs).T, c).backward()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.sub_(lr * parameter.grad)
    network.after_optimizer_step()


def check_gradient_descent(data: Any, method: Any, optim: Any, who: str) -> None:
    """Raise a one-line :class:`ConfigError` naming ``who`` unless the run of datamodule ``data``, ``method`` and
    ``optim`` settings is what Eq. (11) describes and the outputs of the whole data set can be followed step by step:
    the dot-product losses (``method.name=dot_product``), one mini-batch of every pair (``data.batch_size >= n``)
    and plain gradient steps (``optim.name=sgd``, no momentum, no weight decay, a constant learning rate)."""
    if not hasattr(data, "trace_matrix"):
        raise ConfigError(f"{who} needs a fixed set of pairs with a trace matrix (data.name=moons or digits)")
    if getattr(method.config, "name", None) != "dot_product":
        raise ConfigError(f"{who} follows the trace loss of method.name=dot_product, not "
                          f"method.name={method.config.name}")
    if data.config.batch_size < data.n:
        raise ConfigError(f"{who} needs gradient descent on the whole set: set data.batch_size >= {data.n} "
                          f"(data.batch_size={data.config.batch_size})")
    if optim.name != "sgd" or getattr(optim, "momentum", 0.0) or optim.weight_decay or optim.schedule != "constant":
        raise ConfigError(f"{who} needs plain gradient steps: optim.name=sgd with optim.momentum=0, "
                          f"optim.weight_decay=0 and optim.schedule=constant")
