"""A small real HTTP server on 127.0.0.1 that speaks the subset of the Anthropic Messages API carl uses.

``POST /v1/messages`` answers from a script of turns, in order, as JSON or (``"stream": true``) as SSE events
exactly in the API's shape (message_start, content_block_start/delta/stop, message_delta, message_stop).
A turn is a dict:

- ``{"content": [{"type": "text", "text": …} | {"type": "tool_use", "id", "name", "input"}], "usage": {…},
  "stop_reason": …}`` — a reply (stop_reason defaults to tool_use when a tool_use block is present);
- ``{"status": 529}`` (or 500, 429, 401, …) — an error response with the API's error body;
- ``{"stream_error": "overloaded_error", "after_text": "par"}`` — a stream that starts, then sends an SSE
  ``error`` event;
- a callable ``(request_body) -> turn`` for replies that depend on the request.

Every request is kept (``server.requests``: path, headers, parsed body) for the test to inspect.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def text(t: str, usage: dict[str, int] | None = None) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": t}], "usage": usage or {"input_tokens": 10, "output_tokens": 5}}


def tool_use(name: str, input: dict[str, Any], tid: str = "toolu_01", preface: str = "",
             usage: dict[str, int] | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": preface}] if preface else []
    content.append({"type": "tool_use", "id": tid, "name": name, "input": input})
    return {"content": content, "usage": usage or {"input_tokens": 10, "output_tokens": 5}}


def _chunks(s: str, n: int = 12) -> list[str]:
    return [s[i:i + n] for i in range(0, len(s), n)] or [""]


class LoopbackAnthropic:
    def __init__(self, script: list[Any], model: str = "claude-sonnet-4-6"):
        self.script = list(script)
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._n = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                with server._lock:
                    server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                    turn = server.script.pop(0) if server.script else {"status": 500, "message": "script exhausted"}
                    server._n += 1
                    n = server._n
                if callable(turn):
                    turn = turn(body)
                if not self.path.startswith("/v1/messages"):
                    return self._error(404, "not found")
                if "status" in turn:
                    return self._error(int(turn["status"]), turn.get("message", "scripted error"))
                message = server._message(turn, n)
                if body.get("stream"):
                    self._sse(message, turn)
                else:
                    self._json(200, message)

            def _json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_loop_{server._n}")
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str) -> None:
                self._json(status, {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"),
                                                               "message": message}})

            def _event(self, name: str, data: dict[str, Any]) -> None:
                chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()

            def _sse(self, message: dict[str, Any], turn: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.send_header("request-id", f"req_loop_{server._n}")
                self.end_headers()
                usage = message["usage"]
                start = {**message, "content": [], "stop_reason": None,
                         "usage": {**usage, "output_tokens": 1}}
                self._event("message_start", {"type": "message_start", "message": start})
                self._event("ping", {"type": "ping"})
                if "stream_error" in turn:
                    self._event("content_block_start", {"type": "content_block_start", "index": 0,
                                                        "content_block": {"type": "text", "text": ""}})
                    self._event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                        "type": "text_delta", "text": turn.get("after_text", "")}})
                    self._event("error", {"type": "error", "error": {"type": turn["stream_error"],
                                                                     "message": "scripted stream error"}})
                    self.wfile.write(b"0\r\n\r\n")
                    return
                for i, block in enumerate(message["content"]):
                    if block["type"] == "text":
                        self._event("content_block_start", {"type": "content_block_start", "index": i,
                                                            "content_block": {"type": "text", "text": ""}})
                        for piece in _chunks(block["text"]):
                            self._event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                                "delta": {"type": "text_delta", "text": piece}})
                    else:
                        self._event("content_block_start", {"type": "content_block_start", "index": i,
                                                            "content_block": {**block, "input": {}}})
                        for piece in _chunks(json.dumps(block["input"]), 8):
                            self._event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                                "type": "input_json_delta", "partial_json": piece}})
                    self._event("content_block_stop", {"type": "content_block_stop", "index": i})
                self._event("message_delta", {"type": "message_delta", "delta": {
                    "stop_reason": message["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]}})
                self._event("message_stop", {"type": "message_stop"})
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _message(self, turn: dict[str, Any], n: int) -> dict[str, Any]:
        content = turn.get("content", [])
        stop = turn.get("stop_reason") or ("tool_use" if any(b["type"] == "tool_use" for b in content)
                                           else "end_turn")
        usage = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0,
                 "cache_creation_input_tokens": 0, **turn.get("usage", {})}
        return {"id": f"msg_loop_{n}", "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage}

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LoopbackAnthropic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "LoopbackAnthropic":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


Turn = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]
