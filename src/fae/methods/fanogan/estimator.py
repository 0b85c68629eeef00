"""f-AnoGAN: a Wasserstein GAN of healthy slices, then an encoder that inverts it (izi_f).

Schlegl et al., "f-AnoGAN: Fast unsupervised anomaly detection with generative adversarial
networks", MedIA 2019; settings from the FAE paper's comparison code (FeliMe/feature-autoencoder,
``fae/baselines/fAnoGAN``, adapted from dbbbbm/f-AnoGAN-PyTorch):

- residual networks with width ``dim`` = 64 and a 128-d latent: generator (dense to 8·dim × S/32
  × S/32, five upsampling residual blocks 8-8-4-4-2-1 × dim with BatchNorm, a 3×3 convolution
  and tanh), discriminator (a 3×3 convolution, five downsampling residual blocks with
  LayerNorm, a dense output; its last hidden layer are the "features"), encoder (like the
  discriminator with BatchNorm, dense to the latent, tanh);
- phase 1, ``gan_steps`` (10,000) steps: WGAN-GP with λ = 10, one critic step per generator
  step, Adam lr 2e-4, betas (0, 0.9);
- phase 2, the remaining ``steps − gan_steps`` (10,000): the encoder alone (generator and
  critic frozen) with the izi_f loss ``1 − SSIM(x̂, x) + κ · MSE(f_D(x̂), f_D(x))``, κ = 1,
  Adam lr 5e-5; batch 64 throughout;
- map: 1 − SSIM(x̂, x) with an 11×11 Gaussian window, x̂ = G(E(x)).

Deviations: the GAN sees slices scaled to [−1, 1] to match its tanh output (the reference fed
[0, 1]), and the slice score is the shared top-10 % of the map rather than map mean plus the
feature residual, so that every method is scored alike.
"""

from __future__ import annotations

from fae.methods.base import AnomalyMethod
from fae.methods.fanogan.config import FAnoGANConfig
from fae.methods.fanogan.torch_model import FAnoGANModule
from fae.nn.module import MapModule


class FAnoGAN(AnomalyMethod):
    """f-AnoGAN (Schlegl et al. 2019) with izi_f encoder training; see module docs."""

    name = "fanogan"
    config_class = FAnoGANConfig

    @classmethod
    def settings_for_steps(cls, steps: int) -> dict:
        """Half of the budget for the GAN, half for the encoder (as the reference's 10k + 10k)."""
        return {"steps": steps, "gan_steps": max(1, steps // 2)}

    def build(self, load_weights: bool = True) -> MapModule:
        return FAnoGANModule(self.prep.size, self.config)
