"""ollama-ondemand: Ollama on GPU clouds only while it is used."""

from __future__ import annotations

__version__ = "0.1.0"
