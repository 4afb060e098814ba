"""attn_zoo: a comparative benchmark suite for vision-transformer attention mechanisms."""

__version__ = "0.1.0"
