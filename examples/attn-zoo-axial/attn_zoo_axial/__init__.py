"""attn-zoo-axial: axial attention for attn_zoo, registered through the `attn_zoo.mechanisms` entry point."""

from attn_zoo_axial.mechanism import AxialAttention

__all__ = ["AxialAttention"]
