"""Voice calls: a generic templated HTTP voice-call gateway (text-to-speech of the message body).

Same pattern as the generic SMS gateway (`powergate.notify._http.HttpProviderConfig`): the configured JSON body
template is filled from the message (``{address}`` is the number to call, ``{body}`` the text to speak,
``{message_id}`` the idempotency key most gateways accept), and the configured success condition is checked.
Invariants: bounded timeout; 5xx / 429 / timeouts retryable; other refusals permanent; never raises.
A call is placed when the gateway accepts it: whether the tenant answered arrives later, if at all, through
the gateway's own callback, which this adapter does not handle.
"""

from __future__ import annotations

import httpx

from powergate.notify._http import HttpProviderChannel, HttpProviderConfig


def generic_voice(config: HttpProviderConfig, client: httpx.AsyncClient | None = None) -> HttpProviderChannel:
    return HttpProviderChannel("voice", config, client)
