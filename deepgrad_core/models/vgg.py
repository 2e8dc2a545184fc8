"""VGG as a config list fed to one builder (torchvision's style)."""

from __future__ import annotations

from torch import Tensor, nn

from deepgrad_core.models.layers import ConvUnit, make_activation, make_pool, scaled, tag

# Five blocks of convs separated by pooling ("M"): configurations A (VGG-11), B (VGG-13) and D (VGG-16) of
# Simonyan & Zisserman (2015). VGG-Deep is VGG-16 with extra convs (``deepen``).
VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                              512, 512, 512, "M", 512, 512, 512, "M"]
VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": VGG16_CFG,
    "vgg_deep": VGG16_CFG,
}


def deepen(cfg: list[int | str], extra_convs: int) -> list[int | str]:
    """Add ``extra_convs`` convs, one per block of blocks 2-5 in turn (VGG-Deep: 4 -> one each)."""
    blocks: list[list[int]] = [[]]
    for item in cfg:
        if item == "M":
            blocks.append([])
        else:
            blocks[-1].append(int(item))
    blocks = [b for b in blocks if b]
    for i in range(extra_convs):
        block = blocks[1 + i % (len(blocks) - 1)]
        block.append(block[-1])
    out: list[int | str] = []
    for block in blocks:
        out.extend(block)
        out.append("M")
    return out


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, feature_channels: int, num_classes: int,
                 *, hidden: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.features = features
        # Identity at 32x32 input (five poolings leave 1x1); lets larger inputs work too.
        self.pool = nn.AdaptiveAvgPool2d(1)
        drop = (lambda: [nn.Dropout(dropout)]) if dropout > 0 else (lambda: [])
        self.classifier = nn.Sequential(
            *drop(), nn.Linear(feature_channels, hidden), make_activation(activation),
            *drop(), nn.Linear(hidden, hidden), make_activation(activation),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _vgg(cfg: list[int | str], *, kernel_size: int, pooling: str, activation: str, batch_norm: bool,
         dropout: float, bottleneck: bool, bottleneck_factor: int, residual: bool, width: float,
         in_channels: int, num_classes: int) -> VGG:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in cfg:
        if item == "M":
            layers.append(make_pool(pooling))
            continue
        out = scaled(int(item), width)
        layers.append(ConvUnit(channels, out, kernel_size=kernel_size, batch_norm=batch_norm,
                               activation=activation, residual=residual,
                               bottleneck_factor=bottleneck_factor if bottleneck else None))
        channels = out
    tag(next(unit for unit in layers if isinstance(unit, ConvUnit)).conv, "stem")  # the first conv meets the image
    return VGG(nn.Sequential(*layers), channels, num_classes, hidden=scaled(512, width),
               dropout=dropout, activation=activation)


def vgg(*, arch: str = "vgg16", extra_convs: int = 0, **opts) -> VGG:
    """VGG-11, -13 or -16 (``arch``), deepened by ``extra_convs``; see ``ModelSpec`` for the options."""
    return _vgg(deepen(VGG_CFGS[arch], extra_convs), **opts)
