"""The notification channels against real and faked providers on 127.0.0.1.

E-mail goes through a real SMTP server (aiosmtpd) in plain, STARTTLS and implicit-TLS modes, with a
certificate made for the test. The HTTP providers (Alibaba Cloud SMS, a generic SMS / voice gateway,
WeChat official accounts, the push gateway, an integrator's webhook endpoint) are stdlib HTTP servers that
check our requests the way the provider would (signatures recomputed independently in the fake), and can be
switched into an outage (503), a refusal (400) or silence (a timeout).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from powergate.notify._http import HttpProviderChannel, HttpProviderConfig
from powergate.notify.base import DeliveryResult, OutgoingMessage
from powergate.notify.config import ConfigError, build_channels, load_notify_config
from powergate.notify.email import EmailChannel, EmailConfig
from powergate.notify.push import PushChannel, PushConfig
from powergate.notify.sms import AliyunSms, AliyunSmsConfig, generic_sms, rpc_signature
from powergate.notify.voice import generic_voice
from powergate.notify.webhook import VerifiedWebhook, WebhookChannel, WebhookConfig, verify_webhook
from powergate.notify.wechat import WechatMpConfig, WechatTemplateChannel
from testkit import free_port

NOW = dt.datetime(2026, 11, 22, 3, 0, 0, tzinfo=dt.UTC)


def message(channel: str, address: str, **overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "message_id": "ntf_0001",
        "channel": channel,
        "address": address,
        "subject": "余额不足提醒 Low balance",
        "body": "您的电费余额为 18.50 元，请及时充值。\nYour balance is 18.50 yuan.",
        "language": "zh-CN",
        "event": "balance_low",
        "data": {"room": "A-1203", "balance": "18.50", "level": "20.00"},
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


def run(coroutine: Any) -> DeliveryResult:
    result: DeliveryResult = asyncio.run(asyncio.wait_for(coroutine, 30))
    return result


# --- a real SMTP server -------------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """An aiosmtpd handler keeping every message it accepted; it can refuse recipients by prefix."""

    received: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)

    async def handle_RCPT(  # noqa: N802 - the name aiosmtpd calls
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("busy@"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:  # noqa: N802
        assert isinstance(envelope.content, bytes)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append((envelope, parsed))
        return "250 Message accepted for delivery"


def authenticate(server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"meter", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the CA file the client trusts is the certificate itself)."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@contextmanager
def smtp_server(**options: Any) -> Iterator[tuple[Mailbox, int]]:
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def email_config(port: int, **overrides: Any) -> EmailConfig:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "sender": "notify@powergate.example",
        "security": "plain",
        "timeout_s": 5.0,
    }
    fields.update(overrides)
    return EmailConfig(**fields)


def test_an_email_reaches_a_real_smtp_server_with_its_headers_and_utf8_chinese_text() -> None:
    with smtp_server() as (mailbox, port):
        result = run(EmailChannel(email_config(port)).send(message("email", "tenant@example.com")))
    assert result == DeliveryResult(ok=True, provider_id="<ntf_0001@powergate.example>")
    [(envelope, mail)] = mailbox.received
    assert envelope.mail_from == "notify@powergate.example"
    assert envelope.rcpt_tos == ["tenant@example.com"]
    assert mail["Subject"] == "余额不足提醒 Low balance"
    assert mail["Message-ID"] == "<ntf_0001@powergate.example>"
    assert mail["To"] == "tenant@example.com"
    assert mail["Content-Language"] == "zh-CN"
    assert mail["X-PowerGate-Event"] == "balance_low"
    assert mail.get_content_charset() == "utf-8"
    assert mail.get_content().splitlines() == ["您的电费余额为 18.50 元，请及时充值。", "Your balance is 18.50 yuan."]
    raw_subject = envelope.original_content.split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0]
    assert raw_subject.startswith(b"=?utf-8?"), "a Chinese subject travels RFC 2047 encoded"


def test_a_retried_email_carries_the_same_message_id_so_receivers_can_tell_a_resend() -> None:
    with smtp_server() as (mailbox, port):
        channel = EmailChannel(email_config(port))
        run(channel.send(message("email", "tenant@example.com")))
        run(channel.send(message("email", "tenant@example.com")))
    assert [mail["Message-ID"] for _, mail in mailbox.received] == ["<ntf_0001@powergate.example>"] * 2


def test_starttls_with_authentication_delivers_over_an_encrypted_session(certificate: tuple[Path, Path]) -> None:
    options = {
        "tls_context": server_context(certificate),
        "require_starttls": True,
        "authenticator": authenticate,
        "auth_require_tls": True,
    }
    with smtp_server(**options) as (mailbox, port):
        config = email_config(
            port, security="starttls", ca_file=str(certificate[0]), username="meter", password="s3cret"
        )
        result = run(EmailChannel(config).send(message("email", "tenant@example.com")))
    assert result.ok, result.reason
    [(envelope, _)] = mailbox.received
    assert envelope.rcpt_tos == ["tenant@example.com"]


def test_a_wrong_password_is_a_retryable_configuration_failure(certificate: tuple[Path, Path]) -> None:
    options = {"tls_context": server_context(certificate), "authenticator": authenticate, "auth_require_tls": True}
    with smtp_server(**options) as (mailbox, port):
        config = email_config(port, security="starttls", ca_file=str(certificate[0]), username="meter", password="x")
        result = run(EmailChannel(config).send(message("email", "tenant@example.com")))
    assert (result.ok, result.retryable) == (False, True)
    assert "authentication refused (535)" in result.reason
    assert mailbox.received == []


def test_starttls_against_an_untrusted_certificate_fails_without_sending_in_clear(
    certificate: tuple[Path, Path],
) -> None:
    with smtp_server(tls_context=server_context(certificate)) as (mailbox, port):
        result = run(EmailChannel(email_config(port, security="starttls")).send(message("email", "a@example.com")))
    assert (result.ok, result.retryable) == (False, True)
    assert "SSLCertVerificationError" in result.reason
    assert mailbox.received == []


def test_starttls_asked_of_a_server_without_it_is_refused_rather_than_downgraded() -> None:
    with smtp_server() as (mailbox, port):
        result = run(EmailChannel(email_config(port, security="starttls")).send(message("email", "a@example.com")))
    assert (result.ok, result.retryable) == (False, True)
    assert "STARTTLS" in result.reason
    assert mailbox.received == []


def test_implicit_tls_delivers_on_a_tls_only_port(certificate: tuple[Path, Path]) -> None:
    with smtp_server(ssl_context=server_context(certificate)) as (mailbox, port):
        config = email_config(port, security="tls", ca_file=str(certificate[0]))
        result = run(EmailChannel(config).send(message("email", "tenant@example.com")))
    assert result.ok, result.reason
    assert len(mailbox.received) == 1


@pytest.mark.parametrize(
    ("address", "retryable", "reason"),
    [
        ("nobody@example.com", False, "recipient refused: 550"),
        ("busy@example.com", True, "recipient refused: 451"),
        ("not-an-address", False, "address is not an e-mail address"),
        ("a@example.com\r\nBcc: x@evil.example", False, "address is not an e-mail address"),
    ],
)
def test_refusals_are_permanent_for_5xx_and_bad_addresses_and_retryable_for_4xx(
    address: str, retryable: bool, reason: str
) -> None:
    with smtp_server() as (mailbox, port):
        result = run(EmailChannel(email_config(port)).send(message("email", address)))
    assert (result.ok, result.retryable) == (False, retryable)
    assert reason in result.reason
    assert mailbox.received == []


def test_an_smtp_server_that_is_down_gives_a_retryable_result_quickly() -> None:
    started = time.monotonic()
    result = run(EmailChannel(email_config(free_port())).send(message("email", "tenant@example.com")))
    assert (result.ok, result.retryable) == (False, True)
    assert "ConnectionRefusedError" in result.reason
    assert time.monotonic() - started < 5


# --- local HTTP fakes -----------------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, Any] | bytes]


@dataclass
class FakeProvider:
    """A provider on 127.0.0.1: ``answer`` judges each request; ``mode`` forces an outage or silence."""

    answer: Callable[[Seen], Answer]
    mode: str = "normal"  # "normal" | "outage" (503) | "silent" (no answer before the client gives up)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""


@contextmanager
def fake_provider(answer: Callable[[Seen], Answer]) -> Iterator[FakeProvider]:
    fake = FakeProvider(answer)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.handle_any()

        def do_POST(self) -> None:
            self.handle_any()

        def handle_any(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            seen = Seen(
                self.command,
                parts.path,
                dict(urllib.parse.parse_qsl(parts.query)),
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length),
            )
            fake.seen.append(seen)
            if fake.mode == "silent":
                time.sleep(1.5)
                return
            status, body = (503, b"maintenance") if fake.mode == "outage" else fake.answer(seen)
            content = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- signed webhooks -------------------------------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"integrator-secret-0123456789ab").decode()


def integrator(seen: Seen) -> Answer:
    """An integrator's endpoint that verifies the signature itself, from the spec, without our code."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{seen.headers['webhook-id']}.{seen.headers['webhook-timestamp']}.".encode() + seen.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, seen.headers["webhook-signature"]):
        return 401, {"error": "bad signature"}
    if json.loads(seen.body)["data"].get("room") == "reject-me":
        return 400, {"error": "unknown room"}
    return 200, {"id": "rcv-" + seen.headers["webhook-id"]}


def test_a_signed_webhook_is_accepted_by_an_endpoint_that_checks_the_signature_from_the_spec() -> None:
    with fake_provider(integrator) as fake:
        channel = WebhookChannel(WebhookConfig(default_secret=SECRET), clock=lambda: NOW)
        result = run(channel.send(message("webhook", fake.url + "/hooks/powergate")))
    assert result == DeliveryResult(ok=True, provider_id="rcv-ntf_0001")
    [seen] = fake.seen
    assert seen.path == "/hooks/powergate"
    assert seen.headers["webhook-id"] == "ntf_0001"
    assert seen.headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    payload = json.loads(seen.body)
    assert payload["type"] == "balance_low"
    assert payload["timestamp"] == "2026-11-22T03:00:00Z"
    assert payload["data"] == {"room": "A-1203", "balance": "18.50", "level": "20.00"}
    assert verify_webhook(SECRET, seen.headers, seen.body, int(NOW.timestamp())) == VerifiedWebhook(
        "ntf_0001", int(NOW.timestamp()), payload
    )


def test_a_webhook_retried_after_an_outage_keeps_its_id_so_the_integrator_can_drop_the_duplicate() -> None:
    with fake_provider(integrator) as fake:
        channel = WebhookChannel(WebhookConfig(default_secret=SECRET), clock=lambda: NOW)
        fake.mode = "outage"
        first = run(channel.send(message("webhook", fake.url)))
        fake.mode = "normal"
        second = run(channel.send(message("webhook", fake.url)))
    assert (first.ok, first.retryable) == (False, True)
    assert "HTTP 503" in first.reason
    assert second.ok
    assert [seen.headers["webhook-id"] for seen in fake.seen] == ["ntf_0001", "ntf_0001"]


def test_a_webhook_refused_with_4xx_is_permanent_and_a_wrong_secret_is_refused_by_the_endpoint() -> None:
    other = "whsec_" + base64.b64encode(b"some-other-secret-0123456789").decode()
    with fake_provider(integrator) as fake:
        refused = run(
            WebhookChannel(WebhookConfig(default_secret=SECRET)).send(
                message("webhook", fake.url, data={"room": "reject-me"})
            )
        )
        forged = run(WebhookChannel(WebhookConfig(default_secret=other)).send(message("webhook", fake.url)))
    assert (refused.ok, refused.retryable) == (False, False)
    assert "HTTP 400" in refused.reason
    assert (forged.ok, forged.retryable) == (False, False)
    assert "HTTP 401" in forged.reason


def test_a_silent_webhook_endpoint_times_out_into_a_retryable_result() -> None:
    with fake_provider(integrator) as fake:
        fake.mode = "silent"
        result = run(
            WebhookChannel(WebhookConfig(default_secret=SECRET, timeout_s=0.3)).send(message("webhook", fake.url))
        )
    assert (result.ok, result.retryable) == (False, True)
    assert "no answer within 0.3 s" in result.reason


def test_a_webhook_endpoint_that_is_down_is_retryable_and_a_bad_url_is_permanent() -> None:
    down = run(
        WebhookChannel(WebhookConfig(default_secret=SECRET)).send(
            message("webhook", f"http://127.0.0.1:{free_port()}/")
        )
    )
    bad = run(WebhookChannel(WebhookConfig(default_secret=SECRET)).send(message("webhook", "ftp://example.com/")))
    no_secret = run(WebhookChannel(WebhookConfig()).send(message("webhook", "https://example.com/")))
    assert (down.ok, down.retryable) == (False, True)
    assert (bad.ok, bad.retryable, bad.reason) == (False, False, "webhook: address is not an http(s) URL")
    assert (no_secret.ok, no_secret.retryable) == (False, False)


# --- app push --------------------------------------------------------------------------------------------------


def push_gateway(seen: Seen) -> Answer:
    if verify_webhook(SECRET, seen.headers, seen.body, int(time.time())).__class__ is not VerifiedWebhook:
        return 401, {"error": "bad signature"}
    token = json.loads(seen.body)["token"]
    if token == "expired-token":
        return 410, {"error": "token unregistered"}
    return 202, {"id": "push-1"}


def test_an_app_push_reaches_the_gateway_signed_with_the_device_token_and_texts() -> None:
    with fake_provider(push_gateway) as fake:
        channel = PushChannel(PushConfig(url=fake.url + "/push", secret=SECRET))
        result = run(channel.send(message("push", "device-token-abc")))
        gone = run(channel.send(message("push", "expired-token")))
        fake.mode = "outage"
        outage = run(channel.send(message("push", "device-token-abc")))
    assert result == DeliveryResult(ok=True, provider_id="push-1")
    body = json.loads(fake.seen[0].body)
    assert (body["token"], body["title"], body["language"]) == ("device-token-abc", "余额不足提醒 Low balance", "zh-CN")
    assert (gone.ok, gone.retryable) == (False, False)
    assert (outage.ok, outage.retryable) == (False, True)


# --- Alibaba Cloud SMS -----------------------------------------------------------------------------------------

ALIYUN_SECRET = "testSecret"


def aliyun(seen: Seen) -> Answer:
    """dysmsapi as the fake sees it: recompute the signature independently, refuse reuse of a nonce."""
    form = dict(urllib.parse.parse_qsl(seen.body.decode(), keep_blank_values=True))
    signature = form.pop("Signature", "")
    encode = lambda text: urllib.parse.quote(text, safe="~")  # noqa: E731 - RFC 3986, as the docs define it
    canonical = "&".join(f"{encode(k)}={encode(v)}" for k, v in sorted(form.items()))
    to_sign = "POST&%2F&" + encode(canonical)
    digest = hmac.new((ALIYUN_SECRET + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    if not hmac.compare_digest(signature, base64.b64encode(digest).decode()):
        return 400, {"Code": "SignatureDoesNotMatch", "Message": "Specified signature is not matched"}
    if form["PhoneNumbers"] == "10000000000":
        return 200, {"Code": "isv.MOBILE_NUMBER_ILLEGAL", "Message": "invalid number"}
    if form["PhoneNumbers"] == "10000000001":
        return 200, {"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "too many to one number"}
    return 200, {"Code": "OK", "Message": "OK", "BizId": "900619746936498440^0", "RequestId": "F655A8D5"}


def aliyun_sms(url: str, secret: str = ALIYUN_SECRET) -> AliyunSms:
    config = AliyunSmsConfig(
        access_key_id="testId",
        access_key_secret=secret,
        sign_name="PowerGate",
        templates={"balance_low": "SMS_100000001", "balance_low.en": "SMS_100000002"},
        endpoint=url + "/",
        timeout_s=5.0,
    )
    return AliyunSms(config, clock=lambda: NOW)


def test_alibaba_cloud_sms_is_sent_with_a_signature_the_fake_provider_verifies() -> None:
    with fake_provider(aliyun) as fake:
        result = run(aliyun_sms(fake.url).send(message("sms", "13800138000")))
    assert result == DeliveryResult(ok=True, provider_id="900619746936498440^0")
    [seen] = fake.seen
    form = dict(urllib.parse.parse_qsl(seen.body.decode()))
    assert seen.method == "POST" and "PhoneNumbers" not in seen.query
    assert (form["Action"], form["Version"], form["Format"]) == ("SendSms", "2017-05-25", "JSON")
    assert (form["PhoneNumbers"], form["TemplateCode"], form["OutId"]) == ("13800138000", "SMS_100000001", "ntf_0001")
    assert json.loads(form["TemplateParam"]) == {"room": "A-1203", "balance": "18.50", "level": "20.00"}
    assert form["Timestamp"] == "2026-11-22T03:00:00Z"


def test_alibaba_cloud_sms_picks_the_template_of_the_message_language() -> None:
    with fake_provider(aliyun) as fake:
        run(aliyun_sms(fake.url).send(message("sms", "13800138000", language="en")))
    assert dict(urllib.parse.parse_qsl(fake.seen[0].body.decode()))["TemplateCode"] == "SMS_100000002"


@pytest.mark.parametrize(
    ("phone", "secret", "mode", "retryable", "reason"),
    [
        ("13800138000", "wrongSecret", "normal", False, "SignatureDoesNotMatch"),
        ("10000000000", ALIYUN_SECRET, "normal", False, "isv.MOBILE_NUMBER_ILLEGAL"),
        ("10000000001", ALIYUN_SECRET, "normal", True, "isv.BUSINESS_LIMIT_CONTROL"),
        ("13800138000", ALIYUN_SECRET, "outage", True, "HTTP 503"),
        ("not a phone", ALIYUN_SECRET, "normal", False, "address is not a phone number"),
    ],
)
def test_alibaba_cloud_sms_failures_are_classified_retryable_or_permanent(
    phone: str, secret: str, mode: str, retryable: bool, reason: str
) -> None:
    with fake_provider(aliyun) as fake:
        fake.mode = mode
        result = run(aliyun_sms(fake.url, secret).send(message("sms", phone)))
    assert (result.ok, result.retryable) == (False, retryable)
    assert reason in result.reason
    assert secret not in result.reason


def test_alibaba_cloud_signature_matches_the_worked_example_in_the_documentation() -> None:
    # The SendSms example of Alibaba Cloud's SMS signature documentation (GET, AccessKey secret "testSecret").
    params = {
        "AccessKeyId": "testId",
        "Action": "SendSms",
        "Format": "XML",
        "OutId": "123",
        "PhoneNumbers": "15300000001",
        "RegionId": "cn-hangzhou",
        "SignName": "阿里云短信测试专用",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466",
        "SignatureVersion": "1.0",
        "TemplateCode": "SMS_71390007",
        "TemplateParam": '{"customer":"test"}',
        "Timestamp": "2017-07-12T02:42:19Z",
        "Version": "2017-05-25",
    }
    assert rpc_signature("testSecret", "GET", params) == "zJDF+Lrzhj/ThnlvIToysFRq6t4="


# --- generic SMS and voice gateways ----------------------------------------------------------------------------


def gateway(seen: Seen) -> Answer:
    if seen.headers.get("authorization") != "Bearer gw-token":
        return 401, {"result": "unauthorised"}
    request_body = json.loads(seen.body)
    if request_body["to"] == "400":
        return 400, {"result": "bad request"}
    if request_body["to"] == "13900000000":
        return 200, {"result": {"code": "QUEUE_FULL"}}
    return 200, {"result": {"code": "0", "id": "gw-" + request_body["ref"]}}


def gateway_config(url: str) -> HttpProviderConfig:
    return HttpProviderConfig(
        url=url + "/send",
        headers={"Authorization": "Bearer gw-token", "Idempotency-Key": "{message_id}"},
        body={"to": "{address}", "text": "{body}", "ref": "{message_id}", "vars": {"room": "{data.room}"}},
        success_field="result.code",
        success_values=("0",),
        retryable_values=("QUEUE_FULL",),
        id_field="result.id",
        timeout_s=5.0,
    )


@pytest.mark.parametrize("make", [generic_sms, generic_voice])
def test_a_generic_gateway_gets_the_filled_template_and_its_success_condition_is_checked(
    make: Callable[[HttpProviderConfig], HttpProviderChannel],
) -> None:
    with fake_provider(gateway) as fake:
        channel = make(gateway_config(fake.url))
        sent = run(channel.send(message(channel.name, "13800138000")))
        busy = run(channel.send(message(channel.name, "13900000000")))
        refused = run(channel.send(message(channel.name, "400")))
        fake.mode = "outage"
        outage = run(channel.send(message(channel.name, "13800138000")))
    assert sent == DeliveryResult(ok=True, provider_id="gw-ntf_0001")
    first = json.loads(fake.seen[0].body)
    assert first == {
        "to": "13800138000",
        "text": message("sms", "").body,
        "ref": "ntf_0001",
        "vars": {"room": "A-1203"},
    }
    assert fake.seen[0].headers["idempotency-key"] == "ntf_0001"
    assert (busy.ok, busy.retryable) == (False, True)
    assert (refused.ok, refused.retryable) == (False, False)
    assert (outage.ok, outage.retryable) == (False, True)


def test_a_generic_gateway_template_naming_a_missing_variable_is_a_permanent_failure() -> None:
    config = HttpProviderConfig(url="http://127.0.0.1:9/", body={"text": "{data.meter}"})
    result = run(generic_sms(config).send(message("sms", "13800138000")))
    assert (result.ok, result.retryable) == (False, False)
    assert "{data.meter}" in result.reason


# --- WeChat official account -----------------------------------------------------------------------------------


@dataclass
class WechatFake:
    tokens_issued: int = 0
    valid: set[str] = field(default_factory=set)
    sent: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, seen: Seen) -> Answer:
        if seen.path == "/cgi-bin/token":
            if (seen.query.get("appid"), seen.query.get("secret")) != ("wx0001", "app-secret"):
                return 200, {"errcode": 40125, "errmsg": "invalid appsecret"}
            self.tokens_issued += 1
            token = f"TOKEN{self.tokens_issued}"
            self.valid = {token}  # a new token invalidates the old one, as WeChat does
            return 200, {"access_token": token, "expires_in": 7200}
        if seen.query.get("access_token") not in self.valid:
            return 200, {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"}
        request_body = json.loads(seen.body)
        if request_body["touser"] == "o-unsubscribed":
            return 200, {"errcode": 43004, "errmsg": "require subscribe"}
        self.sent.append(request_body)
        return 200, {"errcode": 0, "errmsg": "ok", "msgid": 200228332 + len(self.sent)}


def wechat(url: str, secret: str = "app-secret") -> WechatTemplateChannel:
    config = WechatMpConfig(
        appid="wx0001",
        secret=secret,
        templates={"balance_low": "TPL-low"},
        link_url="https://portal.example/room",
        base_url=url,
        timeout_s=5.0,
    )
    return WechatTemplateChannel(config)


def test_a_wechat_template_message_fetches_a_token_once_and_reuses_it() -> None:
    provider = WechatFake()
    with fake_provider(provider) as fake:
        channel = wechat(fake.url)

        async def two() -> list[DeliveryResult]:
            return list(
                await asyncio.gather(channel.send(message("wechat", "o-1")), channel.send(message("wechat", "o-2")))
            )

        results = asyncio.run(two())
    assert [r.ok for r in results] == [True, True]
    assert provider.tokens_issued == 1
    # The two sends run concurrently: which reaches the provider first is up to the scheduler.
    first = min(provider.sent, key=lambda sent: str(sent["touser"]))
    assert sorted(str(sent["touser"]) for sent in provider.sent) == ["o-1", "o-2"]
    assert first == {
        "touser": "o-1",
        "template_id": "TPL-low",
        "client_msg_id": "ntf_0001",
        "url": "https://portal.example/room",
        "data": {"room": {"value": "A-1203"}, "balance": {"value": "18.50"}, "level": {"value": "20.00"}},
    }


def test_a_wechat_token_replaced_elsewhere_is_refreshed_once_and_the_message_still_goes() -> None:
    provider = WechatFake()
    with fake_provider(provider) as fake:
        channel = wechat(fake.url)

        async def scenario() -> DeliveryResult:
            assert (await channel.send(message("wechat", "o-1"))).ok
            provider.valid = {"TOKEN-from-another-server"}  # someone else fetched a token: ours is now invalid
            return await channel.send(message("wechat", "o-1"))

        result = asyncio.run(scenario())
    assert result.ok, result.reason
    assert provider.tokens_issued == 2
    assert len(provider.sent) == 2


@pytest.mark.parametrize(
    ("openid", "secret", "mode", "retryable", "reason"),
    [
        ("o-unsubscribed", "app-secret", "normal", False, "errcode 43004"),
        ("o-1", "wrong", "normal", True, "wechat token: errcode 40125"),
        ("o-1", "app-secret", "outage", True, "HTTP 503"),
    ],
)
def test_wechat_failures_are_classified_and_never_show_the_secret(
    openid: str, secret: str, mode: str, retryable: bool, reason: str
) -> None:
    with fake_provider(WechatFake()) as fake:
        fake.mode = mode
        result = run(wechat(fake.url, secret).send(message("wechat", openid)))
    assert (result.ok, result.retryable) == (False, retryable)
    assert reason in result.reason
    assert "secret" not in result.reason.replace("appsecret", "")


# --- configuration ---------------------------------------------------------------------------------------------


def test_a_channel_configuration_reads_secrets_from_files_and_the_environment(tmp_path: Path) -> None:
    (tmp_path / "aliyun.key").write_text("testSecret\n")
    (tmp_path / "erp.whsec").write_text(SECRET)
    (tmp_path / "notify.toml").write_text(
        """
[email]
host = "127.0.0.1"
sender = "notify@powergate.example"
username = "meter"
password_env = "SMTP_PASSWORD"
[sms]
provider = "aliyun"
[sms.aliyun]
access_key_id = "testId"
access_key_secret_file = "aliyun.key"
sign_name = "PowerGate"
templates = { balance_low = "SMS_1" }
[webhook]
endpoints = { "https://erp.example.com/hook" = "erp.whsec" }
""",
        encoding="utf-8",
    )
    config = load_notify_config(tmp_path / "notify.toml", {"SMTP_PASSWORD": "s3cret"})
    assert config.email is not None and (config.email.port, config.email.password) == (587, "s3cret")
    assert isinstance(config.sms, AliyunSmsConfig) and config.sms.access_key_secret == "testSecret"
    assert config.webhook is not None and config.webhook.secret_for("https://erp.example.com/hook") == SECRET
    assert sorted(build_channels(config)) == ["email", "sms", "webhook"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[wechat]\nappid = "wx1"\nsecret = "inline"\n', "[wechat] secret: secrets are never written inline"),
        ('[wechat]\nappid = "wx1"\nsecret_env = "NOT_SET"\n', "environment variable NOT_SET is not set"),
        ('[email]\nhost = "h"\nsender = "a@b.example"\nsecurity = "ssl"\n', "[email] security"),
        ('[push]\nurl = "https://p.example"\nsecret_env = "PUSH"\n', "[push] secret: must be whsec_"),
    ],
)
def test_configuration_mistakes_name_the_section_and_field(tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / "notify.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_notify_config(tmp_path / "notify.toml", {"PUSH": "not-whsec"})
    assert reason in str(caught.value)
