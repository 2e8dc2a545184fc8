"""Building blocks shared by every family: activations, conv units, weight init."""

from __future__ import annotations

from torch import Tensor, nn

from deepgrad_core.spec import ACTIVATIONS

_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
assert set(_MODULES) == set(ACTIVATIONS), "every activation the spec allows has a module, and no other"
# torch.nn.init.calculate_gain's names; ELU and GELU behave like ReLU for variance purposes.
_GAIN_NAME = {"relu": "relu", "leaky_relu": "leaky_relu", "elu": "relu", "gelu": "relu",
              "tanh": "tanh", "sigmoid": "sigmoid"}


# A tracked layer's role in its network, set by the builders (``tag``) and read by ``tracked_layers``.
ROLE_ATTR = "deepgrad_role"
ROLES = ("stem", "main", "reduce", "shortcut", "classifier")


def tag(module: nn.Module, role: str) -> nn.Module:
    """Mark ``module`` with its role (one of ``ROLES``); returns it."""
    assert role in ROLES, role
    setattr(module, ROLE_ATTR, role)
    return module


def make_activation(name: str) -> nn.Module:
    # Never in-place: a gradient hook on a conv's output must see that output, not a
    # tensor an in-place activation has overwritten.
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {name!r}")
    return _MODULES[name]()


def make_pool(name: str) -> nn.Module:
    if name == "max":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    if name == "avg":
        return nn.AvgPool2d(kernel_size=2, stride=2)
    raise ValueError(f"pooling must be one of ['max', 'avg'], got {name!r}")


def conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def bottleneck_width(in_ch: int, out_ch: int, factor: int) -> int | None:
    """Channels of the 1x1 reduction before a kxk conv, or None where it would not reduce."""
    mid = max(1, out_ch // factor)
    return mid if in_ch > mid else None


class ConvUnit(nn.Module):
    """[1x1 reduce -> (bn) -> act ->] kxk conv -> (bn) [+ identity] -> act.

    The identity shortcut (``residual``) is added only where input and output shapes
    match, which makes a VGG stage a chain of residual units.
    """

    def __init__(self, in_ch: int, out_ch: int, *, kernel_size: int, batch_norm: bool, activation: str,
                 bottleneck_factor: int | None = None, residual: bool = False) -> None:
        super().__init__()
        mid = bottleneck_width(in_ch, out_ch, bottleneck_factor) if bottleneck_factor else None
        self.reduce = None
        if mid is not None:
            self.reduce = nn.Sequential(tag(conv(in_ch, mid, 1, bias=not batch_norm), "reduce"),
                                        *([nn.BatchNorm2d(mid)] if batch_norm else []),
                                        make_activation(activation))
        self.conv = tag(conv(mid or in_ch, out_ch, kernel_size, bias=True), "main")
        self.bn = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.act = make_activation(activation)
        self.residual = residual and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(self.reduce(x) if self.reduce is not None else x)
        out = self.bn(out)
        if self.residual:
            out = out + x
        return self.act(out)


def init_weights(model: nn.Module, scheme: str, activation: str) -> None:
    """Re-initialise conv and linear weights; ``default`` keeps PyTorch's own init.

    PyTorch's default (Kaiming-uniform with a=sqrt(5), i.e. variance 1/(3 fan_in)) shrinks the
    signal at every ReLU layer: that is what makes VGG-Deep's early gradients vanish.
    """
    if scheme == "default":
        return
    gain_name = _GAIN_NAME[activation]
    param = 0.01 if gain_name == "leaky_relu" else None
    for module in model.modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if scheme == "kaiming_normal":
            nn.init.kaiming_normal_(module.weight, a=param or 0.0, mode="fan_in", nonlinearity=gain_name)
        elif scheme == "xavier_normal":
            nn.init.xavier_normal_(module.weight, gain=nn.init.calculate_gain(gain_name, param))
        elif scheme == "orthogonal":
            nn.init.orthogonal_(module.weight, gain=nn.init.calculate_gain(gain_name, param))
        else:
            raise ValueError(f"init must be one of ['default', 'kaiming_normal', 'xavier_normal', "
                             f"'orthogonal'], got {scheme!r}")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ROLES", "ROLE_ATTR", "ConvUnit", "conv", "count_params", "init_weights", "make_activation", "make_pool",
           "scaled", "bottleneck_width", "tag"]
