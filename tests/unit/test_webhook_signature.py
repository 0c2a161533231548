"""Standard Webhooks signatures: the spec's golden vector, and what `verify_webhook` refuses."""

from __future__ import annotations

import base64

import pytest

from powergate.notify.webhook import (
    RejectedWebhook,
    VerifiedWebhook,
    generate_secret,
    secret_key,
    sign_webhook,
    verify_webhook,
    webhook_headers,
)

# The worked example of the Standard Webhooks specification and its reference libraries.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP_S = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def spec_headers(**overrides: str) -> dict[str, str]:
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP_S), "webhook-signature": SPEC_SIGNATURE}
    headers.update(overrides)
    return headers


def test_signing_the_spec_example_gives_the_spec_signature() -> None:
    assert sign_webhook(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP_S, SPEC_BODY) == SPEC_SIGNATURE
    assert webhook_headers(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP_S, SPEC_BODY) == spec_headers()


def test_the_spec_example_verifies_with_headers_in_any_case() -> None:
    headers = {name.upper(): value for name, value in spec_headers().items()}
    assert verify_webhook(SPEC_SECRET, headers, SPEC_BODY, SPEC_TIMESTAMP_S + 10) == VerifiedWebhook(
        SPEC_ID, SPEC_TIMESTAMP_S, {"test": 2432232314}
    )


def test_one_matching_signature_among_several_is_enough_for_key_rotation() -> None:
    headers = spec_headers(webhook_signature="")
    headers["webhook-signature"] = "v1,bm90LXRoaXMtb25l " + SPEC_SIGNATURE
    assert isinstance(verify_webhook(SPEC_SECRET, headers, SPEC_BODY, SPEC_TIMESTAMP_S), VerifiedWebhook)
    assert isinstance(
        verify_webhook([generate_secret(), SPEC_SECRET], spec_headers(), SPEC_BODY, SPEC_TIMESTAMP_S), VerifiedWebhook
    )


@pytest.mark.parametrize(
    ("secret", "headers", "body", "now_s", "reason"),
    [
        (SPEC_SECRET, spec_headers(), b'{"test": 2432232315}', SPEC_TIMESTAMP_S, "matches no secret"),
        (generate_secret(), spec_headers(), SPEC_BODY, SPEC_TIMESTAMP_S, "matches no secret"),
        (SPEC_SECRET, spec_headers(), SPEC_BODY, SPEC_TIMESTAMP_S + 301, "is 301 s from now"),
        (SPEC_SECRET, spec_headers(), SPEC_BODY, SPEC_TIMESTAMP_S - 301, "-301 s from now"),
        (SPEC_SECRET, {**spec_headers(), "webhook-id": "msg_other"}, SPEC_BODY, SPEC_TIMESTAMP_S, "matches no secret"),
        (
            SPEC_SECRET,
            {"webhook-id": SPEC_ID, "webhook-timestamp": "1614265330"},
            SPEC_BODY,
            SPEC_TIMESTAMP_S,
            "webhook-signature is missing",
        ),
        (
            SPEC_SECRET,
            spec_headers(**{"webhook-timestamp": "1614265330.0"}),
            SPEC_BODY,
            SPEC_TIMESTAMP_S,
            "not integer",
        ),
        ("not-a-secret", spec_headers(), SPEC_BODY, SPEC_TIMESTAMP_S, "matches no secret"),
    ],
    ids=[
        "tampered body",
        "wrong secret",
        "stale timestamp",
        "future timestamp",
        "other id",
        "no signature",
        "fractional timestamp",
        "secret without whsec_",
    ],
)
def test_verify_refuses_what_was_not_signed_by_this_secret_just_now(
    secret: str, headers: dict[str, str], body: bytes, now_s: int, reason: str
) -> None:
    result = verify_webhook(secret, headers, body, now_s)
    assert isinstance(result, RejectedWebhook)
    assert reason in result.reason


def test_generated_secrets_are_whsec_with_32_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    assert secret_key(first) == base64.b64decode(first.removeprefix("whsec_"))
    assert len(secret_key(first) or b"") == 32
