"""attn_zoo: a comparative benchmark suite for vision-transformer attention mechanisms.

Python API: :func:`list_mechanisms`, :func:`create_mechanism`, :func:`create_model`.
"""

from attn_zoo.backbone.presets import create_model, list_presets
from attn_zoo.registry import create_mechanism, list_mechanisms, register_mechanism

__version__ = "0.1.0"

__all__ = ["__version__", "create_mechanism", "create_model", "list_mechanisms", "list_presets", "register_mechanism"]
