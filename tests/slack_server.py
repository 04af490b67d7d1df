"""A real HTTP server on 127.0.0.1 standing in for Slack: it records every request it receives and
answers like Slack does (webhooks: "ok"; Web API: {"ok": true}), or with 429/5xx on demand."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def payload(self) -> dict:
        """The message as sent: JSON, or a form (slack_sdk's Web API client may send either)."""
        if self.headers.get("content-type", "").startswith("application/json"):
            return json.loads(self.body)
        form = {k: v[0] for k, v in parse_qs(self.body.decode()).items()}
        if "blocks" in form:
            form["blocks"] = json.loads(form["blocks"])
        return form


@dataclass
class Reply:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class SlackServer:
    """`with SlackServer() as slack:` ... `slack.webhook_url`, `slack.api_url`, `slack.received`."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: list[Reply] = []  # answered first, in order; then `always`, then success
        self.always: Reply | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with server._lock:
                    server.received.append(Received(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    reply = server.replies.pop(0) if server.replies else server.always
                if reply is None:
                    if self.path.startswith("/api/"):
                        reply = Reply(200, json.dumps({"ok": True, "channel": "C1", "ts": "1.000"}),
                                      {"content-type": "application/json"})
                    else:
                        reply = Reply(200, "ok", {"content-type": "text/plain"})
                data = reply.body.encode()
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T000/B000/secret-webhook-token"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def answer(self, status: int, times: int = 1, retry_after: int | None = None, body: str = "") -> None:
        """The next `times` requests get this status (429 with Retry-After, 500, ...)."""
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        with self._lock:
            self.replies += [Reply(status, body or f"error {status}", headers) for _ in range(times)]

    def answer_always(self, status: int, body: str = "") -> None:
        with self._lock:
            self.always = Reply(status, body or f"error {status}")

    def messages(self) -> list[dict]:
        return [r.payload for r in self.received]

    def start(self) -> "SlackServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "SlackServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
