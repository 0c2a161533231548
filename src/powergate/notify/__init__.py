"""Notifications: the channel contract (`base`) and one adapter module per channel.

Adapters only deliver; choosing recipients, templates, quiet hours and retries belongs to the notification
core. Every adapter bounds its timeouts and reports provider errors as `DeliveryResult` values.
"""

from powergate.notify.base import Channel, DeliveryResult, OutgoingMessage

__all__ = ["Channel", "DeliveryResult", "OutgoingMessage"]
