"""Building blocks several methods share: the module contract, SSIM, frozen feature extractors."""
