"""SMS: a generic templated HTTP gateway and Alibaba Cloud SMS (dysmsapi ``SendSms``, RPC signature v1).

Alibaba Cloud signs RPC requests ("POP" signature 1.0) like this:

    canonical   = "&".join(enc(k) + "=" + enc(v) for k, v in sorted(params))   # every parameter but Signature
    to_sign     = METHOD + "&" + enc("/") + "&" + enc(canonical)
    Signature   = base64(HMAC-SHA1(key=AccessKeySecret + "&", to_sign))

with ``enc`` RFC 3986 percent-encoding of UTF-8 (only ``A-Z a-z 0-9 - _ . ~`` left as they are, so a space is
``%20``, ``*`` is ``%2A``). Invariants:
- The request is a form POST (phone numbers stay out of URLs and access logs); ``Timestamp`` is UTC,
  ``SignatureNonce`` is fresh per attempt (the provider refuses a reused nonce), and ``OutId`` carries
  ``message_id`` so delivery receipts can be matched to our message.
- ``Code == "OK"`` is sent (``BizId`` is the provider id); throttling, provider-side errors, an exhausted
  account and clock / nonce problems are retryable; every other code (bad number, template or signature
  name rejected) is permanent. The AccessKey secret never appears in a reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from powergate.notify._http import (
    HttpAnswer,
    HttpProviderChannel,
    HttpProviderConfig,
    failed,
    parse_json_object,
    request,
)
from powergate.notify.base import DeliveryResult, OutgoingMessage

ALIYUN_ENDPOINT = "https://dysmsapi.aliyuncs.com/"
ALIYUN_API_VERSION = "2017-05-25"
MAX_OUT_ID_CHARS = 256
MAX_PARAM_CHARS = 35  # Alibaba Cloud's limit on one template variable's value
PHONE = re.compile(r"\+?[0-9]{5,20}")
# Codes that say "not now" rather than "never": the message itself is fine.
ALIYUN_RETRYABLE_CODES = frozenset(
    {
        "isp.SYSTEM_ERROR",
        "isv.BUSINESS_LIMIT_CONTROL",
        "isv.AMOUNT_NOT_ENOUGH",
        "isv.OUT_OF_SERVICE",
        "Throttling.User",
        "Throttling",
        "ServiceUnavailable",
        "InternalError",
        "SignatureNonceUsed",
        "InvalidTimeStamp.Expired",
    }
)


def percent_encode(text: str) -> str:
    return urllib.parse.quote(text, safe="~")


def canonical_query(params: Mapping[str, str]) -> str:
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()) if k != "Signature")


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    return f"{method}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def rpc_signature(access_key_secret: str, method: str, params: Mapping[str, str]) -> str:
    """The ``Signature`` parameter of an Alibaba Cloud RPC request (signature version 1.0, HMAC-SHA1)."""
    key = (access_key_secret + "&").encode()
    digest = hmac.new(key, string_to_sign(method, params).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True, slots=True)
class AliyunSmsConfig:
    access_key_id: str
    access_key_secret: str  # loaded from a file or the environment by `powergate.notify.config`
    sign_name: str  # the approved signature (签名), e.g. "PowerGate"
    templates: Mapping[str, str] = field(default_factory=dict)  # "event" or "event.language" -> "SMS_123"
    endpoint: str = ALIYUN_ENDPOINT
    region_id: str = "cn-hangzhou"
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        assert self.endpoint.startswith(("http://", "https://")), f"endpoint {self.endpoint!r}"
        assert 0 < self.timeout_s <= 60, f"timeout_s {self.timeout_s}"

    def template_for(self, event: str, language: str) -> str | None:
        return self.templates.get(f"{event}.{language}") or self.templates.get(event)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AliyunSms:
    """Alibaba Cloud SMS: the message's ``data`` fills the approved template named for its event."""

    name = "sms"

    def __init__(
        self,
        config: AliyunSmsConfig,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], dt.datetime] = _utc_now,
        nonce: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.config = config
        self._client = client
        self._clock = clock
        self._nonce = nonce

    def request_params(self, message: OutgoingMessage, template_code: str) -> dict[str, str]:
        """Every form parameter of the ``SendSms`` request, ``Signature`` included."""
        params = {
            "AccessKeyId": self.config.access_key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "OutId": message.message_id[:MAX_OUT_ID_CHARS],
            "PhoneNumbers": message.address,
            "RegionId": self.config.region_id,
            "SignName": self.config.sign_name,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": self._nonce(),
            "SignatureVersion": "1.0",
            "TemplateCode": template_code,
            "TemplateParam": json.dumps(dict(message.data), ensure_ascii=False, separators=(",", ":")),
            "Timestamp": self._clock().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": ALIYUN_API_VERSION,
        }
        params["Signature"] = rpc_signature(self.config.access_key_secret, "POST", params)
        return params

    async def send(self, message: OutgoingMessage) -> DeliveryResult:
        if not PHONE.fullmatch(message.address):
            return failed("sms: address is not a phone number", retryable=False)
        template_code = self.config.template_for(message.event, message.language)
        if template_code is None:
            return failed(f"sms: no Alibaba Cloud template for event {message.event!r}", retryable=False)
        too_long = [name for name, value in message.data.items() if len(value) > MAX_PARAM_CHARS]
        if too_long:
            return failed(
                f"sms: template variable {too_long[0]!r} is over {MAX_PARAM_CHARS} characters", retryable=False
            )
        form = urllib.parse.urlencode(self.request_params(message, template_code), quote_via=urllib.parse.quote)
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "Accept": "application/json"}
        answer = await request(
            self._client,
            "POST",
            self.config.endpoint,
            timeout_s=self.config.timeout_s,
            headers=headers,
            content=form.encode(),
        )
        return answer if isinstance(answer, DeliveryResult) else judge_aliyun(answer)


def judge_aliyun(answer: HttpAnswer) -> DeliveryResult:
    """Alibaba Cloud answers errors with a JSON ``Code`` (also on 4xx); the code decides, the status backs it."""
    document = parse_json_object(answer.body)
    if document is None or not isinstance(document.get("Code"), str):
        retryable = answer.status >= 500 or answer.status in (408, 429)
        return failed(
            f"sms (Alibaba Cloud): HTTP {answer.status} without a JSON Code", retryable=retryable or answer.status < 300
        )
    code, text = document["Code"], str(document.get("Message", ""))[:120]
    if code == "OK":
        return DeliveryResult(ok=True, provider_id=str(document.get("BizId", "")))
    retryable = code in ALIYUN_RETRYABLE_CODES or answer.status >= 500
    return failed(f"sms (Alibaba Cloud): {code}: {text}", retryable=retryable)


def generic_sms(config: HttpProviderConfig, client: httpx.AsyncClient | None = None) -> HttpProviderChannel:
    """An SMS gateway described by configuration (URL, method, JSON body template, success condition)."""
    return HttpProviderChannel("sms", config, client)
