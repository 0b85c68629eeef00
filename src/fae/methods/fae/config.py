"""The Feature-Autoencoder's hyper-parameters (the paper's defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fae.config import TrainingConfig
from fae.methods.fae.torch_model import DEFAULT_HIDDEN


@dataclass
class FAEConfig(TrainingConfig):
    """Everything that defines a Feature-Autoencoder and its training (paper defaults).

    weights: ``"imagenet"`` (pretrained), a path to a state-dict file, or ``None`` (random
    initialisation: the paper's "untrained ResNet" ablation).
    train_batchnorm: leave the extractor's BatchNorm in training mode while training, as the
    paper's code does (features then depend on the batch and are recomputed every step). The
    default, because it measured better on the LGG T1 development split (see the README);
    ``False`` freezes it, so that features are computed once and training is faster.
    standardize_features: not in the paper: z-score each feature channel with the training
    set's statistics before the autoencoder. SSIM's constants assume values of order 1, while
    raw CNN channels differ in scale by orders of magnitude; standardised, the autoencoder
    learns much faster (see the README).
    fusion: not in the paper: ``"intensity"`` maps the slice's own intensity evidence (its
    surprisal on the healthy calibration slices) weighted by how unusual FAE's structural map is
    there on healthy tissue (:mod:`.fusion`).
    dark_weight: not in the paper: each centred map value (after ``volume_center``, before
    ``slice_median``) times the probability that a healthy brain pixel is brighter than this
    one, at least 0.5 (fitted on the healthy calibration slices): what stands out within the
    scan counts fully where the tissue is darker than healthy tissue (on T1, LGG tumours are
    mostly not brighter than their surroundings), and half where it is brighter.
    dark_smooth: not in the paper: with ``dark_weight``, the darkness is read off the slice
    smoothed in-plane inside the brain by a Gaussian of this many pixels (0: off), both when it
    is fitted on the healthy slices and when it weights a map, so that a dark region counts
    more than a single dark pixel of the tissue's texture.
    """

    backbone: str = "resnet18"
    layers: list[str] | None = None
    weights: str | None = "imagenet"
    train_batchnorm: bool = True
    hidden: list[int] = field(default_factory=lambda: list(DEFAULT_HIDDEN))
    dropout: float = 0.1
    ssim_window: int = 5
    ssim_sigma: float = 1.5
    standardize_features: bool = False
    fusion: str = "none"
    dark_weight: bool = False
    dark_smooth: float = 0.0

    def problems(self) -> dict[str, bool]:
        return {
            **super().problems(),
            "dropout must be in [0, 1)": not 0 <= self.dropout < 1,
            "ssim_window must be odd": self.ssim_window % 2 == 0,
            "fusion must be none or intensity": self.fusion not in ("none", "intensity"),
            "dark_smooth must be at least 0 (pixels; 0: off)": not self.dark_smooth >= 0,
        }
