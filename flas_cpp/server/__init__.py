"""flas-server: OpenAI-compatible HTTP API with steering per request, and a side-by-side web page."""

from .cli import main

__all__ = ["main"]
