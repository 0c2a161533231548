"""WeChat official-account template messages (模板消息): access token cache and ``message/template/send``.

Flow: ``GET /cgi-bin/token?grant_type=client_credential&appid=..&secret=..`` gives an ``access_token`` valid
for ``expires_in`` seconds (7200); ``POST /cgi-bin/message/template/send?access_token=..`` with ``touser``
(the openid in ``message.address``), ``template_id`` (configured per event, optionally per language), ``data``
(each template variable as ``{"value": ...}``) and ``client_msg_id`` (WeChat's own de-duplication key: our
``message_id``) sends one message. Invariants:
- One token is shared by all sends and refreshed `REFRESH_MARGIN_S` before it expires, under a lock so
  concurrent sends fetch it once. When WeChat says the token is invalid or expired (40001, 40014, 42001:
  another server may have fetched a new one) the token is dropped, fetched again and the send retried ONCE.
- errcode 0 is sent (``msgid`` is the provider id); system busy (-1) and rate limits (45009, 45011) are
  retryable, as are token failures (the app secret or IP allow-list is a configuration problem, not the
  message's); a tenant who unsubscribed (43004), a bad openid (40003) or template (40037) is permanent.
- The app secret and the token never appear in a reason (URLs are reported without their query).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from powergate.notify._http import failed, parse_json_object, request, status_failure
from powergate.notify.base import DeliveryResult, OutgoingMessage

WECHAT_BASE_URL = "https://api.weixin.qq.com"
REFRESH_MARGIN_S = 300
MAX_TOKEN_LIFETIME_S = 7200
MAX_VALUE_CHARS = 200
MAX_OPENID_CHARS = 64
TOKEN_INVALID = frozenset({40001, 40014, 42001})
RETRYABLE_ERRCODES = frozenset({-1, 45009, 45011})


@dataclass(frozen=True, slots=True)
class WechatMpConfig:
    appid: str
    secret: str  # the AppSecret, loaded from a file or the environment by `powergate.notify.config`
    templates: Mapping[str, str] = field(default_factory=dict)  # "event" or "event.language" -> template_id
    link_url: str = ""  # where tapping the message leads (the tenant portal), optional
    base_url: str = WECHAT_BASE_URL
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        assert self.base_url.startswith(("http://", "https://")), f"base_url {self.base_url!r}"
        assert 0 < self.timeout_s <= 60, f"timeout_s {self.timeout_s}"

    def template_for(self, event: str, language: str) -> str | None:
        return self.templates.get(f"{event}.{language}") or self.templates.get(event)


@dataclass(slots=True)
class _Token:
    value: str
    expires_at_s: float  # on the monotonic clock


class WechatTemplateChannel:
    name = "wechat"

    def __init__(
        self,
        config: WechatMpConfig,
        client: httpx.AsyncClient | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._client = client
        self._monotonic = monotonic
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.token_fetches = 0  # how many times a token was fetched (visible to tests and metrics)

    async def send(self, message: OutgoingMessage) -> DeliveryResult:
        if not message.address or len(message.address) > MAX_OPENID_CHARS:
            return failed("wechat: address is not an openid", retryable=False)
        template_id = self.config.template_for(message.event, message.language)
        if template_id is None:
            return failed(f"wechat: no template for event {message.event!r}", retryable=False)
        body = json.dumps(template_request(message, template_id, self.config.link_url), ensure_ascii=False).encode()
        result = await self._send_once(body)
        if result is not None:
            return result
        self._token = None  # WeChat refused the token: another process may have replaced it; fetch anew once
        return await self._send_once(body) or failed("wechat: access token refused twice in a row", retryable=True)

    async def _send_once(self, body: bytes) -> DeliveryResult | None:
        """The outcome, or None when WeChat refused the access token."""
        token = await self._access_token()
        if isinstance(token, DeliveryResult):
            return token
        answer = await request(
            self._client,
            "POST",
            f"{self.config.base_url}/cgi-bin/message/template/send",
            timeout_s=self.config.timeout_s,
            params={"access_token": token},
            headers={"Content-Type": "application/json; charset=utf-8"},
            content=body,
        )
        if isinstance(answer, DeliveryResult):
            return answer
        problem = status_failure("wechat template/send", answer)
        if problem is not None:
            return problem
        document = parse_json_object(answer.body) or {}
        errcode = document.get("errcode", 0 if "msgid" in document else None)
        if errcode == 0:
            return DeliveryResult(ok=True, provider_id=str(document.get("msgid", "")))
        if errcode in TOKEN_INVALID:
            return None
        reason = f"wechat template/send: errcode {errcode}: {str(document.get('errmsg', ''))[:120]}"
        return failed(reason, retryable=errcode in RETRYABLE_ERRCODES or not isinstance(errcode, int))

    async def _access_token(self) -> str | DeliveryResult:
        async with self._lock:
            token = self._token
            if token is not None and self._monotonic() < token.expires_at_s - REFRESH_MARGIN_S:
                return token.value
            fetched = await self._fetch_token()
            if isinstance(fetched, _Token):
                self._token = fetched
                return fetched.value
            return fetched

    async def _fetch_token(self) -> _Token | DeliveryResult:
        self.token_fetches += 1
        answer = await request(
            self._client,
            "GET",
            f"{self.config.base_url}/cgi-bin/token",
            timeout_s=self.config.timeout_s,
            params={"grant_type": "client_credential", "appid": self.config.appid, "secret": self.config.secret},
        )
        if isinstance(answer, DeliveryResult):
            return answer
        problem = status_failure("wechat token", answer)
        if problem is not None:
            return problem
        document = parse_json_object(answer.body) or {}
        value, lifetime_s = document.get("access_token"), document.get("expires_in")
        if not isinstance(value, str) or not value or not isinstance(lifetime_s, int) or lifetime_s <= 0:
            reason = f"wechat token: errcode {document.get('errcode')}: {str(document.get('errmsg', ''))[:120]}"
            return failed(reason, retryable=True)
        return _Token(value, self._monotonic() + min(lifetime_s, MAX_TOKEN_LIFETIME_S))


def template_request(message: OutgoingMessage, template_id: str, link_url: str) -> dict[str, object]:
    document: dict[str, object] = {
        "touser": message.address,
        "template_id": template_id,
        "client_msg_id": message.message_id,
        "data": {name: {"value": value[:MAX_VALUE_CHARS]} for name, value in message.data.items()},
    }
    if link_url:
        document["url"] = link_url
    return document
