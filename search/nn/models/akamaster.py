"""Published float checkpoints mapped onto the zoo's models (as ``fp.pt`` checkpoints the search starts from).

``akamaster-resnet20``: ResNet-20 of the public repository akamaster/pytorch_resnet_cifar10
(``../shared/models/resnet20-cifar10/resnet20-12fca82f.th``, BSD). It differs from the zoo's resnet20 in
two places, both mapped exactly except where noted:

* **Option-A shortcuts** (stride-2 subsampling, channels zero-padded ``planes//4`` on each side) where
  ours has a 1×1 convolution + BatchNorm (option B). Option A is a 1×1 stride-2 convolution whose weight
  is a 0/1 matrix (output channel ``pad + i`` reads input channel i) followed by an identity BatchNorm
  (γ = 1, β = 0, mean 0, var 1 − eps), so it computes option A bit for bit in float. The cost: the
  shortcut is a real convolution on the device (its MACs count), and its 0/1 weights are exact at any
  symmetric bit width ≥ 2 (levels −1, 0, 1 × step 1).
* **Input normalisation** x/255 with ImageNet's mean/std where our CIFAR-10 loader uses CIFAR's. The
  difference is folded into the stem: conv1's weight scaled per input channel and the constant it adds
  moved into bn1's running mean. Exact except on the one-pixel border, where the zero padding of the
  two normalisations differs by the (small) mean offset.

    python -m search.nn.models.akamaster --output runs/resnet20-fp.pt [--source PATH] [--data-dir DIR]

writes the checkpoint with its measured test accuracy (81.0% on the JPEG CIFAR-10 copy here).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import SearchError
from search.nn.models import build_model

AKAMASTER_MEAN = (0.485, 0.456, 0.406)
AKAMASTER_STD = (0.229, 0.224, 0.225)
DEFAULT_SOURCE = Path(__file__).resolve().parents[3].parent / "shared" / "models" / "resnet20-cifar10" / "resnet20-12fca82f.th"


def option_a_shortcut(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Make (conv 1×1 stride s, bn) compute option A: x[:, :, ::s, ::s] zero-padded to out channels, centred."""
    out_ch, in_ch = conv.weight.shape[:2]
    pad = (out_ch - in_ch) // 2
    with torch.no_grad():
        conv.weight.zero_()
        for i in range(in_ch):
            conv.weight[pad + i, i, 0, 0] = 1.0
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)


def fold_input_normalisation(conv: nn.Conv2d, bn: nn.BatchNorm2d, src: tuple[tuple[float, ...], tuple[float, ...]],
                             dst: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    """Rewrite a bias-free stem (conv, bn) trained on inputs normalised with `src` (mean, std) for inputs
    normalised with `dst`: x_src = a·x_dst + b per channel, a = std_dst/std_src, b = (mean_dst − mean_src)/std_src."""
    a = torch.tensor(dst[1]) / torch.tensor(src[1])
    b = (torch.tensor(dst[0]) - torch.tensor(src[0])) / torch.tensor(src[1])
    with torch.no_grad():
        constant = (conv.weight.sum(dim=(2, 3)) * b).sum(dim=1)  # what conv adds for the constant b (interior)
        conv.weight.mul_(a.view(1, -1, 1, 1))
        bn.running_mean.sub_(constant)


def load_akamaster_resnet20(path: str | Path, mean: tuple[float, ...], std: tuple[float, ...]) -> nn.Module:
    """The zoo's resnet20 (eval mode) holding akamaster's weights, for inputs normalised with (mean, std)."""
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"ResNet-20 checkpoint '{path}' not found: pass --source (the resnet20-12fca82f.th file)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as exc:  # noqa: BLE001 - any unpickling failure: not the expected file
        raise SearchError(f"'{path}' is not akamaster's ResNet-20 checkpoint ({type(exc).__name__})") from None
    sd = {k.removeprefix("module."): v for k, v in raw.items()}
    model = build_model("resnet20", (3, 32, 32), 10)
    mapped: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("layer"):  # layerS.B.* → layers.(3(S−1)+B).*
            stage, block, rest = k.split(".", 2)
            k = f"layers.{3 * (int(stage[5:]) - 1) + int(block)}.{rest}"
        mapped[k.replace("linear.", "fc.")] = v
    own = model.state_dict()
    missing = [k for k in own if k not in mapped and ".shortcut." not in k and not k.endswith("num_batches_tracked")]
    unknown = [k for k in mapped if k not in own]
    if missing or unknown:
        raise SearchError(f"'{path}' does not map onto resnet20 (missing {missing[:3]}, unknown {unknown[:3]})")
    model.load_state_dict({**own, **mapped})
    for block in model.layers:
        if isinstance(block.shortcut, nn.Sequential):
            option_a_shortcut(block.shortcut[0], block.shortcut[1])
    fold_input_normalisation(model.conv1, model.bn1, (AKAMASTER_MEAN, AKAMASTER_STD), (tuple(mean), tuple(std)))
    return model.eval()


def write_checkpoint(model: nn.Module, dataset: Any, out: Path, source: Path) -> dict[str, Any]:
    """``fp.pt`` in :func:`search.nn.train.fit`'s format (test accuracy measured here); returns its meta."""
    from search.nn.data import BatchLoader
    from search.nn.train import atomic_save, evaluate

    test = evaluate(model, BatchLoader(dataset.test, dataset, 500))
    val = evaluate(model, BatchLoader(dataset.val, dataset, 500))
    meta = {"model": "resnet20", "model_kwargs": {}, "dataset": dataset.name, "input_shape": list(dataset.input_shape),
            "classes": list(dataset.classes), "mean": list(dataset.mean), "std": list(dataset.std),
            "test_accuracy": test.accuracy, "val_accuracy": val.accuracy, "test_loss": test.loss, "epochs": 0,
            "seed": 0, "source": f"akamaster/pytorch_resnet_cifar10 {source.name} (option-A shortcuts as fixed 1x1 convs)",
            "torch": str(torch.__version__)}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"state_dict": model.state_dict(), "meta": meta}, out)
    return meta


def main(argv: list[str] | None = None) -> int:
    from search.nn.data import load_dataset

    p = argparse.ArgumentParser(description="write akamaster's float ResNet-20 as an fp.pt checkpoint of the zoo's resnet20")
    p.add_argument("--output", required=True)
    p.add_argument("--source", default=str(DEFAULT_SOURCE))
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    try:
        ds = load_dataset("cifar10", args.data_dir)
        model = load_akamaster_resnet20(args.source, ds.mean, ds.std)
        meta = write_checkpoint(model, ds, Path(args.output), Path(args.source))
    except SearchError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{args.output}: resnet20, test top-1 {meta['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
