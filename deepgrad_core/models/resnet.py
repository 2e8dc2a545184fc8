"""ResNet-18 and ResNet-34 for CIFAR-size inputs, written from scratch (torchvision's structure).

3x3 stem without max-pool, BasicBlocks [2, 2, 2, 2] (ResNet-34: [3, 4, 6, 3]); identity shortcuts, 1x1 projection
where the shape changes. ``residual=False`` drops every shortcut: the "plain" network
of He et al. (2016).
"""

from __future__ import annotations

from torch import Tensor, nn

from deepgrad_core.models.layers import bottleneck_width, conv, make_activation, scaled, tag


def _conv_bn(in_ch: int, out_ch: int, k: int, stride: int, batch_norm: bool, role: str) -> list[nn.Module]:
    return [tag(conv(in_ch, out_ch, k, stride=stride, bias=not batch_norm), role),
            *([nn.BatchNorm2d(out_ch)] if batch_norm else [])]


def _maybe_reduced_conv(in_ch: int, out_ch: int, *, k: int, stride: int, batch_norm: bool,
                        activation: str, bottleneck_factor: int | None) -> nn.Sequential:
    """kxk conv (+bn), preceded by a 1x1 channel reduction (+bn, act) when ``bottleneck_factor``."""
    mid = bottleneck_width(in_ch, out_ch, bottleneck_factor) if bottleneck_factor else None
    if mid is None:
        return nn.Sequential(*_conv_bn(in_ch, out_ch, k, stride, batch_norm, "main"))
    return nn.Sequential(*_conv_bn(in_ch, mid, 1, 1, batch_norm, "reduce"), make_activation(activation),
                         *_conv_bn(mid, out_ch, k, stride, batch_norm, "main"))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int, *, kernel_size: int, batch_norm: bool,
                 activation: str, residual: bool, bottleneck_factor: int | None) -> None:
        super().__init__()
        opts = dict(k=kernel_size, batch_norm=batch_norm, activation=activation,
                    bottleneck_factor=bottleneck_factor)
        self.conv1 = _maybe_reduced_conv(in_ch, planes, stride=stride, **opts)
        self.act1 = make_activation(activation)
        self.conv2 = _maybe_reduced_conv(planes, planes, stride=1, **opts)
        self.act2 = make_activation(activation)
        self.residual = residual
        self.shortcut: nn.Module | None = None
        if residual and (stride != 1 or in_ch != planes):
            self.shortcut = nn.Sequential(*_conv_bn(in_ch, planes, 1, stride, batch_norm, "shortcut"))

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.act1(self.conv1(x)))
        if self.residual:
            out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return self.act2(out)


class ResNet(nn.Module):
    def __init__(self, layers: list[int], *, kernel_size: int, batch_norm: bool, activation: str,
                 residual: bool, bottleneck: bool, bottleneck_factor: int, width: float,
                 in_channels: int, num_classes: int) -> None:
        super().__init__()
        block_opts = dict(kernel_size=kernel_size, batch_norm=batch_norm, activation=activation,
                          residual=residual, bottleneck_factor=bottleneck_factor if bottleneck else None)
        stem = scaled(64, width)
        self.conv1 = nn.Sequential(*_conv_bn(in_channels, stem, kernel_size, 1, batch_norm, "stem"))
        self.act1 = make_activation(activation)
        stages, in_ch = [], stem
        for i, blocks in enumerate(layers):
            planes = scaled(64 * 2**i, width)
            stage = []
            for j in range(blocks):
                stage.append(BasicBlock(in_ch, planes, 2 if (i > 0 and j == 0) else 1, **block_opts))
                in_ch = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


def _resnet(layers: list[int], **opts) -> ResNet:
    return ResNet(layers, **opts)


def resnet18(**opts) -> ResNet:
    return _resnet([2, 2, 2, 2], **opts)


def resnet34(**opts) -> ResNet:
    return _resnet([3, 4, 6, 3], **opts)
