"""Bill notices: the event CHECKs of notification_preferences and notification_templates admit bill_issued and
bill_overdue.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

BEFORE = (
    "'low_balance', 'tripped', 'restored', 'recharge_received', 'refund', 'meter_alarm', 'meter_offline', "
    "'reconciliation_discrepancy', 'daily_report_ready', 'runout_forecast'"
)
AFTER = BEFORE + ", 'bill_issued', 'bill_overdue'"


def _replace(events: str) -> None:
    for table in ("notification_preferences", "notification_templates"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint("event", type_="check")
            batch.create_check_constraint("event", f"event IN ({events})")


def upgrade() -> None:
    _replace(AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM notification_preferences WHERE event IN ('bill_issued', 'bill_overdue')")
    op.execute("DELETE FROM notification_templates WHERE event IN ('bill_issued', 'bill_overdue')")
    _replace(BEFORE)
