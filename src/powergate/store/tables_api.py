"""Tables the HTTP API needs: which organisation owns a tariff.

``tariffs`` (``store/tables.py``) predates organisations: its id is global. ``tariff_owners`` gives a tariff
created through the API its organisation (one owner per tariff: the PRIMARY KEY), so that a tariff is only ever
listed to, edited by and assigned within its own organisation. A tariff without an owner (loaded by the CLI or
a seed script) is visible to an organisation only while one of that organisation's meters uses it
(``powergate.services.queries.visible_tariffs``).
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, String, Table

from powergate.store.tables import Id, UTCDateTime, metadata

tariff_owners = Table(
    "tariff_owners",
    metadata,
    Column("tariff_id", String(64), ForeignKey("tariffs.id"), primary_key=True),
    Column("organisation_id", Id, ForeignKey("organisations.id"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_tariff_owners_organisation_id", "organisation_id"),
)
