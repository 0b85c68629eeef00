"""f-AnoGAN (Schlegl et al. 2019) with izi_f encoder training: config, torch model, estimator."""

from fae.methods.fanogan.config import FAnoGANConfig
from fae.methods.fanogan.estimator import FAnoGAN
from fae.methods.fanogan.torch_model import FAnoGANModule

__all__ = ["FAnoGAN", "FAnoGANConfig", "FAnoGANModule"]
