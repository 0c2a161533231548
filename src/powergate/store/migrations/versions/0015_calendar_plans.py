"""Site calendar overrides and per-tariff warning levels: site_calendar_days, site_calendar_revisions,
tariff_warning_levels; the kind CHECK of meter_commands admits set_tou (the TOU table push).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from powergate.store.tables import UTCDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Written out rather than imported: a migration is a frozen record of the schema at its revision.
KINDS_BEFORE = (
    "'trip', 'close', 'close_allowed', 'protect_on', 'protect_off', 'recharge', 'set_alarms', "
    "'set_power_limit', 'set_prices', 'time_sync'"
)
KINDS_AFTER = (
    "'trip', 'close', 'close_allowed', 'protect_on', 'protect_off', 'recharge', 'set_alarms', "
    "'set_power_limit', 'set_prices', 'set_tou', 'time_sync'"
)


def _command_kinds(kinds: str) -> None:
    with op.batch_alter_table("meter_commands") as batch:
        batch.drop_constraint("kind", type_="check")
        batch.create_check_constraint("kind", f"kind IN ({kinds})")


def upgrade() -> None:
    _command_kinds(KINDS_AFTER)
    op.create_table(
        "site_calendar_days",
        sa.Column("site_id", Id, sa.ForeignKey("sites.id"), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("day_type", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("updated_by", sa.String(120), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("site_id", "day"),
        sa.CheckConstraint("day_type IN ('workday', 'weekend', 'holiday')", name="day_type"),
    )
    op.create_table(
        "site_calendar_revisions",
        sa.Column("site_id", Id, sa.ForeignKey("sites.id"), primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.CheckConstraint("revision >= 1", name="revision"),
    )
    op.create_table(
        "tariff_warning_levels",
        sa.Column("tariff_id", sa.String(64), sa.ForeignKey("tariffs.id"), primary_key=True),
        sa.Column("levels", sa.Text, nullable=False),
        sa.Column("updated_by", sa.String(120), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.execute("DELETE FROM meter_commands WHERE kind = 'set_tou'")
    _command_kinds(KINDS_BEFORE)
    op.drop_table("tariff_warning_levels")
    op.drop_table("site_calendar_revisions")
    op.drop_table("site_calendar_days")
