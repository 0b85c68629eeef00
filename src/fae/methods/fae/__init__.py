"""The Structural Feature-Autoencoder (Meissen et al. 2022): config, torch model, estimator."""

from fae.methods.fae.config import FAEConfig
from fae.methods.fae.estimator import FAE
from fae.methods.fae.torch_model import FeatureAutoencoder, StructuralFAE

__all__ = ["FAE", "FAEConfig", "FeatureAutoencoder", "StructuralFAE"]
