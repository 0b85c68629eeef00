"""Anomaly-localisation methods that share the data pipeline and the evaluation."""
