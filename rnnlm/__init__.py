"""rnnlm: an experiment runner for dropout in recurrent language models."""

__version__ = "0.1.0"
