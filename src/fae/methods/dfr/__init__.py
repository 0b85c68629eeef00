"""DFR, deep feature reconstruction (Shi et al. 2021): config, torch model, estimator."""

from fae.methods.dfr.config import DFRConfig
from fae.methods.dfr.estimator import DFR
from fae.methods.dfr.torch_model import DFRModule, latent_channels

__all__ = ["DFR", "DFRConfig", "DFRModule", "latent_channels"]
