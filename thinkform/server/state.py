"""What the handlers share: the engine and what is derived from it once at startup."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from thinkform.engine.requests import RequestLimits
from thinkform.reasoning.markers import ReasoningMarkers
from thinkform.server.chat import ChatRenderer
from thinkform.server.metrics import ServerMetrics
from thinkform.server.response_store import ResponseStore
from thinkform.server.tools import ToolCallParser, get_tool_call_parser, guess_tool_call_parser


@dataclass
class ServerState:
    engine: Any  # thinkform.Engine (or anything with its contract)
    renderer: ChatRenderer
    tool_parser: ToolCallParser
    markers: ReasoningMarkers | None
    model_name: str
    max_n: int | None
    api_key: str | None = None
    admin_api_key: str | None = None  # SGLang's: the admin routes take it instead of api_key (app.py)
    limits: RequestLimits = field(default_factory=RequestLimits)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    responses: ResponseStore = field(default_factory=ResponseStore)  # /v1/responses with store: true
    health_generate_timeout_s: float = 20.0  # SGLang's: /health_generate's token must come within this

    @classmethod
    def from_engine(cls, engine: Any, api_key: str | None = None,
                    admin_api_key: str | None = None) -> "ServerState":
        args = getattr(engine, "args", None)
        tokenizer = engine.tokenizer
        special = {name: getattr(tokenizer, name, None) or "" for name in
                   ("bos_token", "eos_token", "unk_token", "pad_token")}
        parser_name = getattr(args, "tool_call_parser", None)
        tool_template = engine.tool_chat_template
        parser = get_tool_call_parser(parser_name) if parser_name else \
            guess_tool_call_parser(tool_template or engine.chat_template)
        engine.set_tool_markup(parser.markup)  # its tags stay in the text the parser reads
        renderer = ChatRenderer(engine.chat_template, special, tool_template=tool_template)
        return cls(engine=engine, renderer=renderer, tool_parser=parser,
                   markers=engine.markers, model_name=engine.served_model_name,
                   max_n=getattr(args, "max_n", None), api_key=api_key if api_key is not None
                   else getattr(args, "api_key", None),
                   admin_api_key=admin_api_key if admin_api_key is not None
                   else getattr(args, "admin_api_key", None),
                   limits=RequestLimits.from_args(args) if args is not None else RequestLimits(),
                   health_generate_timeout_s=getattr(args, "health_generate_timeout", 20.0))


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
