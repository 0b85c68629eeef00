"""fae: unsupervised anomaly localisation in brain MRI with Structural Feature-Autoencoders."""

__version__ = "0.2.0"
