"""Neural-network building blocks: SSIM, feature extractors, the feature autoencoder."""
