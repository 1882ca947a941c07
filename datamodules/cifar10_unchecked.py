"""torchvision's ``CIFAR10`` without the md5 check of its files, in a module of its own so that torchvision is
imported only when CIFAR-10 is loaded (and the class pickles by name, e.g. into spawned loader workers)."""

from __future__ import annotations

from typing import Any, ClassVar

from torchvision.datasets import CIFAR10


class UncheckedCIFAR10(CIFAR10):
    """``CIFAR10`` whose expected md5s are all ``None``, which torchvision's ``check_integrity`` reads as "the file
    exists": files that are not the official ones are parsed by torchvision's own code, and a missing file still
    fails. A download still checks the archive's md5 (``tgz_md5``)."""

    train_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in CIFAR10.train_list]
    test_list: ClassVar[list[list[str | None]]] = [[name, None] for name, _ in CIFAR10.test_list]
    meta: ClassVar[dict[str, Any]] = {**CIFAR10.meta, "md5": None}
