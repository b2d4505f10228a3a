"""Converters to GGUF: Hugging Face Gemma-2 checkpoints and FLAS flow checkpoints."""

from .base import convert_base
from .common import ConversionError
from .flow import convert_flow

__all__ = ["convert_base", "convert_flow", "ConversionError"]
