"""Anomaly-localisation methods, one folder each (config, torch model, estimator), sharing the
estimator of :mod:`fae.methods.base` and named in :mod:`fae.methods.registry`."""
