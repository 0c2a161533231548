"""The demo's notification inbox: a local SMS gateway and webhook receiver that the real channels deliver to.

The demo configures two real notification channels (``powergate.notify``): the generic HTTP SMS provider, whose
URL is this inbox's ``/sms``, and signed webhooks (Standard Webhooks), whose receiver is ``/webhook``. Tenants
get their low-balance, trip and restore messages by "SMS" here, the site's administrators by webhook; each
message is printed on the demo's console and listed at ``/`` (a page that refreshes itself) and
``/messages.json``.

Invariants: a webhook is accepted only when its signature verifies (``verify_webhook``: the same check an
integrator runs); the inbox keeps at most ``MAX_MESSAGES`` (the oldest dropped); a message delivered twice with
the same id (a retried delivery) is listed once.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from powergate.notify.webhook import RejectedWebhook, verify_webhook

MAX_MESSAGES = 1_000
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class InboxMessage:
    received_at: str
    channel: str
    """``sms`` or ``webhook``."""
    to: str
    text: str
    message_id: str
    event: str = ""


class Inbox:
    def __init__(self, webhook_secret: str, printer: Callable[[str], None] | None = None) -> None:
        self.webhook_secret = webhook_secret
        self.messages: deque[InboxMessage] = deque(maxlen=MAX_MESSAGES)
        self._seen: set[str] = set()
        self.printer = printer

    def add(self, message: InboxMessage) -> bool:
        if message.message_id in self._seen:
            return False
        if len(self._seen) > 4 * MAX_MESSAGES:
            self._seen = {m.message_id for m in self.messages}
        self._seen.add(message.message_id)
        self.messages.append(message)
        if self.printer is not None:
            self.printer(f"  [{message.channel} to {message.to}] {message.text}")
        return True

    def of_event(self, event: str) -> list[InboxMessage]:
        return [m for m in self.messages if m.event == event or event in m.text]

    def app(self) -> FastAPI:
        api = FastAPI(title="PowerGate demo inbox", docs_url=None, redoc_url=None, openapi_url=None)

        @api.post("/sms")
        async def sms(request: Request) -> JSONResponse:
            raw = await request.body()
            try:
                document = json.loads(raw[:MAX_BODY_BYTES])
                to, text, ref = str(document["to"]), str(document["text"]), str(document["ref"])
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"code": "400", "message": "body must be JSON with to, text and ref"}, 400)
            event = str(document.get("event", ""))
            self.add(InboxMessage(_now(), "sms", to, text, ref, event))
            return JSONResponse({"code": "0", "id": ref})

        @api.post("/webhook")
        async def webhook(request: Request) -> JSONResponse:
            raw = await request.body()
            verified = verify_webhook(self.webhook_secret, dict(request.headers), raw, int(time.time()))
            if isinstance(verified, RejectedWebhook):
                return JSONResponse({"detail": verified.reason}, 401)
            payload = verified.payload if isinstance(verified.payload, dict) else {}
            message = payload.get("message", {}) if isinstance(payload.get("message"), dict) else {}
            text = f"{message.get('subject', '')}: {message.get('body', '')}".strip(": ")
            event = str(payload.get("type", ""))
            self.add(InboxMessage(_now(), "webhook", "operations desk", text, verified.message_id, event))
            return JSONResponse({"id": verified.message_id})

        @api.get("/messages.json")
        async def messages() -> JSONResponse:
            return JSONResponse([asdict(m) for m in reversed(self.messages)])

        @api.get("/", response_class=HTMLResponse)
        async def page() -> HTMLResponse:
            return HTMLResponse(self.render())

        return api

    def render(self) -> str:
        rows = "\n".join(
            f"<tr><td>{html.escape(m.received_at)}</td><td>{html.escape(m.channel)}</td>"
            f"<td>{html.escape(m.to)}</td><td>{html.escape(m.text)}</td></tr>"
            for m in reversed(self.messages)
        )
        empty = '<tr><td colspan="4">还没有消息 / No messages yet</td></tr>'
        return (
            '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
            '<meta http-equiv="refresh" content="5"><title>演示收件箱 Demo inbox</title>'
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;"
            "text-align:left}</style></head><body>"
            "<h1>演示收件箱 Demo notification inbox</h1>"
            "<p>短信和 Webhook 通知(由演示的通知通道真实投递)/ SMS and webhook notifications, delivered by the "
            "demo's real notification channels.</p>"
            "<table><tr><th>时间 Received (UTC)</th><th>通道 Channel</th><th>收件人 To</th><th>内容 Message</th></tr>"
            f"{rows or empty}</table></body></html>"
        )


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
