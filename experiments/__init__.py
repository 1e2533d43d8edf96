"""absl mains, one per paper analysis: ``python -m experiments.NAME``."""
