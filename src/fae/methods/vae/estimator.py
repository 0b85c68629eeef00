"""``vae``: a variational autoencoder in image space (Baur et al. 2021, as in the FAE paper's
code, ``fae/baselines/vae``).

Loss mean (x − x̂)² + 0.05 · KL (the reference calls the weight "very sensitive"); map (x − x̂)²
weighted by the smoothed, normalised gradient of the KL term with respect to the input
(Zimmerer et al.'s combination, as in the reference code). Deviation: the gradient is min-max
normalised per slice, not per batch, so a map never depends on its batch.
"""

from __future__ import annotations

from fae.methods.base import AnomalyMethod
from fae.methods.vae.config import VAEConfig
from fae.methods.vae.torch_model import VAEModule
from fae.nn.module import MapModule


class VAE(AnomalyMethod):
    """Variational autoencoder in image space (Baur et al. style; see module docs)."""

    name = "vae"
    config_class = VAEConfig
    export_problem = "its map needs autograd (the gradient of the KL term), which ONNX has not"

    def build(self, load_weights: bool = True) -> MapModule:
        c = self.config
        return VAEModule(self.prep.size, c.hidden, c.latent, kl_weight=c.kl_weight)
