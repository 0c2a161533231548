"""One ``MeterLink`` over several transports: each call goes to the link of the endpoint's transport.

The command dispatcher and on-demand reads take a single link; a head-end process that serves DTUs, MQTT meters
and Modbus gateways hands them a ``LinkRouter``. A meter whose transport has no link in this process is
OFFLINE (another head-end process may serve it).
"""

from __future__ import annotations

from collections.abc import Mapping

from powergate.headend.model import (
    CommandResult,
    FailureKind,
    LinkError,
    MeterCommand,
    MeterEndpoint,
    MeterLink,
    MeterSnapshot,
    ReadItem,
    Transport,
)


class LinkRouter:
    def __init__(self, links: Mapping[Transport, MeterLink]) -> None:
        self.links = dict(links)

    def _link(self, endpoint: MeterEndpoint) -> MeterLink | LinkError:
        link = self.links.get(endpoint.transport)
        if link is None:
            return LinkError(FailureKind.OFFLINE, f"no {endpoint.transport.value} link in this head-end process")
        return link

    async def read(self, endpoint: MeterEndpoint, items: frozenset[ReadItem]) -> MeterSnapshot | LinkError:
        link = self._link(endpoint)
        return link if isinstance(link, LinkError) else await link.read(endpoint, items)

    async def execute(self, endpoint: MeterEndpoint, command: MeterCommand) -> CommandResult | LinkError:
        link = self._link(endpoint)
        return link if isinstance(link, LinkError) else await link.execute(endpoint, command)

    def online(self, endpoint: MeterEndpoint) -> bool:
        link = self._link(endpoint)
        return not isinstance(link, LinkError) and link.online(endpoint)
