"""nanodna: small pure-JAX DNA language models (Caduceus, transformers) and their data."""

__version__ = "0.1.0"
