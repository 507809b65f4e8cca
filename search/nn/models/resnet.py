"""ResNet-8 (MLPerf Tiny image classification) and ResNet-20 (He et al., CIFAR variant).

Shortcuts that change shape use a 1x1 convolution + BatchNorm (option B), which lowers to
plain integer convolutions on the device.
"""
from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, `len(widths)` stages of `blocks_per_stage` basic blocks, global average pool, FC."""

    def __init__(self, widths: tuple[int, ...], blocks_per_stage: int, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=False)
        layers: list[nn.Module] = []
        in_ch = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks_per_stage):
                stride = 2 if (i > 0 and b == 0) else 1
                layers.append(BasicBlock(in_ch, w, stride))
                in_ch = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.flatten(self.pool(x)))


def resnet8(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """MLPerf Tiny IC ResNet-8: 16/32/64 filters, one block per stage (≈78 k params, ≈12.5 M MACs at 32×32)."""
    return CifarResNet((16, 32, 64), 1, in_channels, num_classes)


def resnet20(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for CIFAR: 16/32/64 filters, three blocks per stage."""
    return CifarResNet((16, 32, 64), 3, in_channels, num_classes)
