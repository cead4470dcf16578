"""`from thinkform.test.doc_patch import launch_server_cmd`, as SGLang's notebooks spell it."""
from __future__ import annotations

from thinkform.utils import launch_server_cmd

__all__ = ["launch_server_cmd"]
