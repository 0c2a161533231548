"""The contract between the notification core and its channel adapters.

A notification leaves the core as one `OutgoingMessage` and comes back from a channel as one
`DeliveryResult`. Invariants:
- `message_id` is the idempotency key of one message to one recipient; every adapter passes it on to a
  provider that accepts one (the webhook id header, the SMS `OutId`, the e-mail `Message-ID`), so a retry
  after a lost reply cannot turn into a second message on the provider's side.
- `Channel.send` never raises for a provider error: an outage, a timeout or a rejection is a `DeliveryResult`
  with `ok=False`, a reason naming what failed, and `retryable` telling the core whether to try again.
"""

from __future__ import annotations

# The types live in the pure domain layer so that the delivery worker (services) can use them without importing
# this outer adapter package; adapters import them from here.
from powergate.domain.notifications import Channel, DeliveryResult, OutgoingMessage

__all__ = ["Channel", "DeliveryResult", "OutgoingMessage"]
