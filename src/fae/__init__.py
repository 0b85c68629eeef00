"""fae: unsupervised anomaly localisation in brain MRI with Structural Feature-Autoencoders."""

__version__ = "0.1.0"
