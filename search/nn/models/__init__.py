"""Model zoo: build a model by name for a dataset's input shape and class count.

Every model lists its quantizable layers (Conv2d / Linear) in execution order via
:func:`quantizable_layers`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from search.errors import SearchError
from search.nn.models.mobilenetv2 import mobilenet_v2
from search.nn.models.resnet import resnet8, resnet20

ModelFactory = Callable[..., nn.Module]

MODELS: dict[str, ModelFactory] = {
    "resnet8": resnet8,
    "resnet20": resnet20,
    "mbv2": mobilenet_v2,
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **kwargs) -> nn.Module:
    """Build zoo model `name` for inputs of shape (C, H, W) and `num_classes` outputs."""
    if name not in MODELS:
        raise SearchError(f"unknown model '{name}'; known models: {', '.join(sorted(MODELS))}")
    model = MODELS[name](in_channels=input_shape[0], num_classes=num_classes, **kwargs)
    model.input_shape = tuple(input_shape)  # type: ignore[attr-defined]
    return model


def quantizable_layers(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every Conv2d/Linear in the order a forward pass executes them."""
    shape = input_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise SearchError("quantizable_layers needs the model's input shape")
    order: list[tuple[str, nn.Module]] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [
        m.register_forward_pre_hook(lambda mod, _inp: order.append((names[mod], mod)))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    seen: set[int] = set()
    unique = []
    for name, mod in order:
        if id(mod) not in seen:
            seen.add(id(mod))
            unique.append((name, mod))
    return unique
