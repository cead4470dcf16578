"""HTTP servers: OpenAI-compatible and native (SGLang) APIs around one Engine."""
from __future__ import annotations

from thinkform.server.app import create_app

__all__ = ["create_app"]
