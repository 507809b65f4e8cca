"""akamaster's float ResNet-20 mapped onto the zoo's resnet20 (option-A shortcuts, folded normalisation)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from search.errors import SearchError
from search.nn.models.akamaster import (AKAMASTER_MEAN, AKAMASTER_STD, DEFAULT_SOURCE, fold_input_normalisation,
                                      load_akamaster_resnet20)

needs_file = pytest.mark.skipif(not DEFAULT_SOURCE.is_file(), reason=f"{DEFAULT_SOURCE} not present")


def _reference(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """akamaster's ResNet-20 forward written out with functional ops on its own state dict (option A)."""
    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"])

    out = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))
    for stage in (1, 2, 3):
        for block in range(3):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            h = F.relu(bn(F.conv2d(out, sd[p + ".conv1.weight"], stride=stride, padding=1), p + ".bn1"))
            h = bn(F.conv2d(h, sd[p + ".conv2.weight"], padding=1), p + ".bn2")
            short = out
            if stride != 1 or out.shape[1] != h.shape[1]:
                pad = h.shape[1] // 4
                short = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
            out = F.relu(h + short)
    return F.linear(out.mean(dim=(2, 3)), sd["linear.weight"], sd["linear.bias"])


@needs_file
def test_option_a_mapping_computes_the_published_network() -> None:
    sd = {k.removeprefix("module."): v for k, v in torch.load(DEFAULT_SOURCE, map_location="cpu", weights_only=True)["state_dict"].items()}
    model = load_akamaster_resnet20(DEFAULT_SOURCE, AKAMASTER_MEAN, AKAMASTER_STD)  # same normalisation: nothing folded
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference(sd, x), rtol=1e-4, atol=1e-4)
    assert sum(isinstance(b.shortcut, nn.Sequential) for b in model.layers) == 2  # the two option-A shortcuts


def test_folded_normalisation_is_exact_without_padding() -> None:
    g = torch.Generator().manual_seed(1)
    conv, bn = nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        bn.running_mean.copy_(torch.randn(5, generator=g))
        bn.running_var.copy_(torch.rand(5, generator=g) + 0.5)
    conv.eval(), bn.eval()
    src, dst = ((0.1, 0.2, 0.3), (0.5, 0.6, 0.7)), ((0.4, 0.5, 0.45), (0.25, 0.24, 0.26))
    raw = torch.rand(2, 3, 8, 8, generator=g)
    norm = lambda m: (raw - torch.tensor(m[0]).view(1, 3, 1, 1)) / torch.tensor(m[1]).view(1, 3, 1, 1)  # noqa: E731
    with torch.no_grad():
        expected = bn(conv(norm(src)))
        fold_input_normalisation(conv, bn, src, dst)
        torch.testing.assert_close(bn(conv(norm(dst))), expected, rtol=1e-5, atol=1e-5)


def test_a_wrong_file_is_a_one_line_error(tmp_path) -> None:
    with pytest.raises(SearchError, match="not found"):
        load_akamaster_resnet20(tmp_path / "none.th", AKAMASTER_MEAN, AKAMASTER_STD)
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SearchError, match="not akamaster"):
        load_akamaster_resnet20(bad, AKAMASTER_MEAN, AKAMASTER_STD)


@pytest.mark.slow
@needs_file
def test_mapped_resnet20_reproduces_81_percent_on_our_cifar10() -> None:
    from search.nn.data import BatchLoader, load_dataset
    from search.nn.train import evaluate

    ds = load_dataset("cifar10")
    model = load_akamaster_resnet20(DEFAULT_SOURCE, ds.mean, ds.std)
    acc = evaluate(model, BatchLoader(ds.test, ds, 500)).accuracy
    assert acc == pytest.approx(0.81, abs=0.01)  # 81.0% published for this copy; 81.08% measured
