"""ssl-bench: Lightning benchmark suite for collapse in self-supervised learning."""

__version__ = "0.1.0"
