"""torchvision's MobileNetV2 with a width multiplier, adapted for small inputs (e.g. 32×32).

Adaptation for small inputs (as is usual for CIFAR): the stem convolution has stride 1 and the
second stage (24 channels) keeps stride 1, so a 32×32 input ends at 4×4 before pooling instead of 1×1.
Dropout is removed from the classifier (it has nothing to do on a microcontroller and keeps the
graph to integer-lowerable ops).
"""
from __future__ import annotations

from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

# t (expansion), c (channels), n (repeats), s (stride of the first repeat)
SMALL_INPUT_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],  # stride 2 in torchvision; 1 for small inputs
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def mobilenet_v2(in_channels: int = 3, num_classes: int = 10, width_mult: float = 0.5, last_channel: int | None = 640) -> nn.Module:
    """MobileNetV2 (torchvision definition) for small inputs.

    `width_mult` scales every stage as torchvision does; `last_channel` overrides the width of the
    final 1×1 convolution (torchvision uses 1280·max(1, width_mult); 640 suits MCU flash budgets).
    """
    model = tv_mobilenet_v2(num_classes=num_classes, width_mult=width_mult, inverted_residual_setting=SMALL_INPUT_SETTING)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    if last_channel is not None:
        head = model.features[-1][0]
        model.features[-1][0] = nn.Conv2d(head.in_channels, last_channel, 1, 1, 0, bias=False)
        model.features[-1][1] = nn.BatchNorm2d(last_channel)
        model.last_channel = last_channel
    model.classifier = nn.Sequential(nn.Linear(model.last_channel, num_classes))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model
