"""torchvision ResNets as feature extractors, optionally with the CIFAR stem (He et al. 2016, Sec. 4.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ssl_bench.config import EncoderConfig
from ssl_bench.registry import register

RESNETS = {"resnet18": 512, "resnet50": 2048}  # name -> feature width


@register("encoder", *RESNETS)
class ResNetBackbone(nn.Module):
    """A randomly initialized torchvision ResNet without its classifier: ``x (B, 3, H, W) -> (B, output_dim)``,
    the features after global average pooling (``output_dim`` 512 for resnet18, 2048 for resnet50).

    The CIFAR stem replaces the 7x7 stride-2 ``conv1`` by a 3x3 stride-1 convolution (padding 1, no bias) and drops
    the max pool, so a 32x32 image reaches the last stage at 4x4 instead of 1x1; the new convolution is initialized
    like torchvision's (Kaiming normal, fan-out).
    """

    @dataclass
    class Config(EncoderConfig):
        cifar_stem: bool = True
        needs = ("images",)

        @property
        def output_dim(self) -> int:
            return RESNETS[self.name]

    def __init__(self, name: str = "resnet18", cifar_stem: bool = True) -> None:
        from torchvision import models

        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"backbone name={name!r}; choose one of {tuple(RESNETS)}")
        self.net = getattr(models, name)(weights=None)
        if cifar_stem:
            self.net.conv1 = nn.Conv2d(3, self.net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.net.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.net.maxpool = nn.Identity()
        self.output_dim: int = self.net.fc.in_features
        self.net.fc = nn.Identity()

    @classmethod
    def from_config(cls, config: Config, data: Any, generator: Any) -> ResNetBackbone:
        return cls(config.name, cifar_stem=config.cifar_stem)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def layer_outputs(self, x: Tensor) -> list[Tensor]:
        """The global-average-pooled output of each stage ``layer1`` ... ``layer4``, (B, channels) each; the last
        is :meth:`forward`'s output."""
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        outputs = []
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = stage(x)
            outputs.append(x.mean(dim=(2, 3)))
        return outputs
