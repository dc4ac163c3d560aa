"""Reference models built from :mod:`so2nn.layers`."""

from ._config import PRESETS, EquiformerV2Config, preset
from ._equiformer_v2 import EquiformerV2, TransformerBlock

__all__ = ["EquiformerV2", "EquiformerV2Config", "PRESETS", "TransformerBlock", "preset"]
