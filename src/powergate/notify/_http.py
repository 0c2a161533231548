"""HTTP plumbing shared by the HTTP channel adapters, and the generic templated HTTP provider.

Invariants:
- One request, one bounded timeout, at most `MAX_RESPONSE_BYTES` of the answer read; redirects are never
  followed (a provider that moved is a configuration problem, not something to chase with a phone number).
- Transport errors never escape: they become a retryable `DeliveryResult` naming the request.
- Status classes map to retry decisions in one place: 2xx delivered; 408, 425, 429 and 5xx retryable (the
  provider is busy or down: the message must wait, never be dropped); any other status permanent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from powergate.notify.base import DeliveryResult, OutgoingMessage

MAX_RESPONSE_BYTES = 64 * 1024
MAX_REASON_CHARS = 300
RETRYABLE_STATUSES = frozenset({408, 425, 429})
TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_\-]+)?)\}")


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes


def failed(reason: str, *, retryable: bool) -> DeliveryResult:
    return DeliveryResult(ok=False, retryable=retryable, reason=reason[:MAX_REASON_CHARS])


def status_failure(what: str, answer: HttpAnswer) -> DeliveryResult | None:
    """None for a 2xx answer; otherwise the failure it means, retryable or not by status class."""
    if 200 <= answer.status < 300:
        return None
    retryable = answer.status >= 500 or answer.status in RETRYABLE_STATUSES
    snippet = answer.body[:120].decode("utf-8", "replace")
    return failed(f"{what}: HTTP {answer.status}: {snippet}", retryable=retryable)


async def request(
    client: httpx.AsyncClient | None,
    method: str,
    url: str,
    *,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    params: Mapping[str, str] | None = None,
) -> HttpAnswer | DeliveryResult:
    """One HTTP exchange; a transport failure comes back as a retryable `DeliveryResult`."""
    assert 0 < timeout_s <= 120, f"timeout_s {timeout_s} out of range"
    what = f"{method} {_without_query(url)}"
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as own:
                return await _exchange(own, method, url, timeout_s, headers, content, params)
        return await _exchange(client, method, url, timeout_s, headers, content, params)
    except httpx.TimeoutException:
        return failed(f"{what}: no answer within {timeout_s:g} s", retryable=True)
    except httpx.HTTPError as error:
        return failed(f"{what}: {type(error).__name__}: {error}", retryable=True)


async def _exchange(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    timeout_s: float,
    headers: Mapping[str, str] | None,
    content: bytes | None,
    params: Mapping[str, str] | None,
) -> HttpAnswer:
    async with client.stream(
        method, url, headers=headers, content=content, params=params, timeout=timeout_s, follow_redirects=False
    ) as response:
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= MAX_RESPONSE_BYTES:
                body = body[:MAX_RESPONSE_BYTES]  # a longer answer is not one we need to read whole
                break
        return HttpAnswer(response.status_code, body)


def _without_query(url: str) -> str:
    # Query strings may carry tokens (WeChat access_token): keep them out of reasons and logs.
    return url.split("?", 1)[0][:200]


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def dig(document: Mapping[str, Any], path: str) -> object:
    """The value at a dotted path (``result.code``) or None when any step is missing."""
    value: object = document
    for step in path.split("."):
        if not isinstance(value, Mapping) or step not in value:
            return None
        value = value[step]
    return value


# --- the generic templated HTTP provider ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpProviderConfig:
    """A provider described by configuration rather than code.

    ``body`` is a JSON template: every string in it may hold ``{field}`` placeholders, replaced by
    ``message_id``, ``address``, ``subject``, ``body``, ``language``, ``event`` or ``data.<name>``. When
    ``success_field`` is empty a 2xx answer means sent; otherwise the answer's JSON value at that dotted path
    must be one of ``success_values``; a value in ``retryable_values`` is a retryable refusal, any other a
    permanent one. ``id_field`` names where the provider's message id is.
    """

    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] = field(default_factory=dict)
    success_field: str = ""
    success_values: Sequence[str] = ()
    retryable_values: Sequence[str] = ()
    id_field: str = ""
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        assert self.method in ("POST", "PUT", "GET"), f"method {self.method!r}"
        assert self.url.startswith(("http://", "https://")), f"url {self.url!r}"
        assert 0 < self.timeout_s <= 60, f"timeout_s {self.timeout_s}"


class MissingField(LookupError):
    """A template names a field the message does not carry."""


def fill_template(template: object, message: OutgoingMessage) -> object:
    """The template with every ``{field}`` replaced; raises `MissingField` naming the first unknown one."""
    if isinstance(template, str):
        return TEMPLATE_FIELD.sub(lambda match: _field(match.group(1), message), template)
    if isinstance(template, Mapping):
        return {str(key): fill_template(value, message) for key, value in template.items()}
    if isinstance(template, list | tuple):
        return [fill_template(value, message) for value in template]
    return template


def _field(name: str, message: OutgoingMessage) -> str:
    if name.startswith("data."):
        key = name[len("data.") :]
        if key not in message.data:
            raise MissingField(name)
        return message.data[key]
    if name in ("message_id", "address", "subject", "body", "language", "event"):
        value: str = getattr(message, name)
        return value
    raise MissingField(name)


class HttpProviderChannel:
    """Any SMS or voice gateway that takes one JSON request per message (see `HttpProviderConfig`)."""

    def __init__(self, name: str, config: HttpProviderConfig, client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self.config = config
        self._client = client

    async def send(self, message: OutgoingMessage) -> DeliveryResult:
        try:
            payload = fill_template(dict(self.config.body), message)
            headers = {str(k): str(fill_template(v, message)) for k, v in self.config.headers.items()}
        except MissingField as missing:
            return failed(f"{self.name}: template field {{{missing.args[0]}}} is not in the message", retryable=False)
        content = None if self.config.method == "GET" else json.dumps(payload, ensure_ascii=False).encode()
        params = {k: str(v) for k, v in payload.items()} if isinstance(payload, dict) and content is None else None
        if content is not None:
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        answer = await request(
            self._client,
            self.config.method,
            self.config.url,
            timeout_s=self.config.timeout_s,
            headers=headers,
            content=content,
            params=params,
        )
        if isinstance(answer, DeliveryResult):
            return answer
        return self._judge(answer)

    def _judge(self, answer: HttpAnswer) -> DeliveryResult:
        what = f"{self.name} provider"
        problem = status_failure(what, answer)
        if problem is not None:
            return problem
        document = parse_json_object(answer.body) if (self.config.success_field or self.config.id_field) else {}
        if document is None:
            return failed(f"{what}: answer is not a JSON object", retryable=True)
        provider_id = str(dig(document, self.config.id_field) or "") if self.config.id_field else ""
        if not self.config.success_field:
            return DeliveryResult(ok=True, provider_id=provider_id)
        outcome = str(dig(document, self.config.success_field))
        if outcome in self.config.success_values:
            return DeliveryResult(ok=True, provider_id=provider_id)
        retryable = outcome in self.config.retryable_values
        return failed(f"{what}: {self.config.success_field} = {outcome[:60]!r}", retryable=retryable)
