"""E-mail over SMTP: plain, STARTTLS or implicit TLS, optional AUTH, bounded timeouts.

The standard library's `smtplib` does the talking, on a worker thread (`asyncio.to_thread`) so the event loop
never blocks on a slow server. Invariants:
- The ``Message-ID`` header is derived from ``message.message_id`` alone, so every retry of one message carries
  the same id and a receiving system (or a human) can tell a resend from a second notice.
- Headers are built by `email.message.EmailMessage` with the SMTP policy: a Chinese subject is RFC 2047
  encoded, the body is UTF-8, and a CR or LF smuggled into an address or subject cannot add a header.
- With STARTTLS or implicit TLS the server certificate is verified (against ``ca_file`` when given); mail is
  never silently downgraded to plain text when STARTTLS was asked for.
- SMTP 5xx refusals of the recipient or the message are permanent; 4xx, timeouts, disconnects, TLS failures
  and authentication failures (a configuration problem, not the message's) are retryable.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import smtplib
import ssl
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate

from powergate.notify._http import failed
from powergate.notify.base import DeliveryResult, OutgoingMessage

SECURITY_MODES = ("plain", "starttls", "tls")
MAX_ADDRESS_CHARS = 254
MAX_SUBJECT_CHARS = 400
MAX_BODY_CHARS = 100_000
SAFE_ID = re.compile(r"[A-Za-z0-9._\-]{1,128}")
ADDRESS = re.compile(r"[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;]+")


@dataclass(frozen=True, slots=True)
class EmailConfig:
    host: str
    port: int
    sender: str  # the From address
    security: str = "starttls"  # "plain" | "starttls" | "tls" (implicit TLS, usually port 465)
    sender_name: str = "PowerGate"
    username: str = ""
    password: str = ""  # loaded from a file or the environment by `powergate.notify.config`
    ca_file: str = ""  # a CA bundle to trust instead of the system's (a private relay's certificate)
    timeout_s: float = 15.0
    message_id_domain: str = ""  # defaults to the sender's domain

    def __post_init__(self) -> None:
        assert self.security in SECURITY_MODES, f"security {self.security!r} not in {SECURITY_MODES}"
        assert 0 < self.port < 65536, f"port {self.port}"
        assert 0 < self.timeout_s <= 120, f"timeout_s {self.timeout_s}"
        assert ADDRESS.fullmatch(self.sender), f"sender {self.sender!r} is not an e-mail address"

    @property
    def id_domain(self) -> str:
        return self.message_id_domain or self.sender.rsplit("@", 1)[1]


def message_id_header(message_id: str, domain: str) -> str:
    """``<id@domain>``; an id with characters not allowed there is replaced by its SHA-256 (still stable)."""
    local = message_id if SAFE_ID.fullmatch(message_id) else hashlib.sha256(message_id.encode()).hexdigest()
    return f"<{local}@{domain}>"


def build_email(message: OutgoingMessage, config: EmailConfig) -> EmailMessage | str:
    """The e-mail for one message, or a reason naming the field that cannot be sent."""
    if len(message.address) > MAX_ADDRESS_CHARS or not ADDRESS.fullmatch(message.address):
        return "address is not an e-mail address"
    if len(message.subject) > MAX_SUBJECT_CHARS or any(c in message.subject for c in "\r\n"):
        return f"subject must be one line of at most {MAX_SUBJECT_CHARS} characters"
    if len(message.body) > MAX_BODY_CHARS:
        return f"body is longer than {MAX_BODY_CHARS} characters"
    mail = EmailMessage(policy=SMTP_POLICY)
    mail["From"] = Address(display_name=config.sender_name, addr_spec=config.sender)
    mail["To"] = message.address
    mail["Subject"] = message.subject
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = message_id_header(message.message_id, config.id_domain)
    mail["X-PowerGate-Event"] = message.event
    mail.set_content(message.body, charset="utf-8")
    mail["Content-Language"] = message.language  # after set_content, which clears every Content-* header
    return mail


class EmailChannel:
    name = "email"

    def __init__(self, config: EmailConfig) -> None:
        self.config = config

    async def send(self, message: OutgoingMessage) -> DeliveryResult:
        mail = build_email(message, self.config)
        if isinstance(mail, str):
            return failed(f"email: {mail}", retryable=False)
        return await asyncio.to_thread(self._deliver, mail)

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.config.ca_file or None)

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        if config.security == "tls":
            return smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout_s, context=self._tls_context())
        smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout_s)
        if config.security == "starttls":
            try:
                smtp.ehlo()
                # SMTPNotSupportedError when the server offers no STARTTLS: we never go on in clear.
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            except BaseException:
                smtp.close()
                raise
        return smtp

    def _deliver(self, mail: EmailMessage) -> DeliveryResult:
        where = f"email via {self.config.host}:{self.config.port}"
        message_id = str(mail["Message-ID"])
        try:
            smtp = self._connect()
            try:
                if self.config.username:
                    smtp.login(self.config.username, self.config.password)
                smtp.send_message(mail)
            finally:
                _quit_quietly(smtp)
        except smtplib.SMTPAuthenticationError as error:
            return failed(f"{where}: authentication refused ({error.smtp_code})", retryable=True)
        except smtplib.SMTPRecipientsRefused as error:
            code, text = next(iter(error.recipients.values()))
            return failed(f"{where}: recipient refused: {code} {_text(text)}", retryable=code < 500)
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as error:
            return failed(
                f"{where}: refused: {error.smtp_code} {_text(error.smtp_error)}", retryable=error.smtp_code < 500
            )
        except smtplib.SMTPNotSupportedError as error:
            return failed(f"{where}: server does not support {error}", retryable=True)
        except (smtplib.SMTPException, OSError) as error:
            # Timeouts, refused connections, TLS failures and drops all land here: the server may come back.
            return failed(f"{where}: {type(error).__name__}: {error}", retryable=True)
        return DeliveryResult(ok=True, provider_id=message_id)


def _quit_quietly(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()  # the message was already accepted or refused; a failed goodbye changes nothing


def _text(reply: bytes | str) -> str:
    return (reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply)[:160]
