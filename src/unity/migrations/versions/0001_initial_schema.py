"""Initial schema: plugins, instances, status, executions, series, samples, rollups, alerts.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    is_postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("metric_name", sa.String(length=200), nullable=False),
        sa.Column("plugin_id", sa.String(length=64), nullable=True),
        sa.Column("instance_id", sa.Uuid(), nullable=True),
        sa.Column(
            "labels",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("operator", sa.String(length=4), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("clear_threshold", sa.Float(), nullable=True),
        sa.Column("for_s", sa.Integer(), nullable=False),
        sa.Column("severity", sa.String(length=20), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "notify",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_rules")),
    )
    with op.batch_alter_table("alert_rules", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_alert_rules_metric_name"), ["metric_name"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_alert_rules_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "plugins",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("plugin_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("category", sa.String(length=50), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column(
            "manifest",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "config_schema",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("broken_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plugins")),
        sa.UniqueConstraint("plugin_id", name=op.f("uq_plugins_plugin_id")),
    )
    with op.batch_alter_table("plugins", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plugins_category"), ["category"], unique=False)
        batch_op.create_index(batch_op.f("ix_plugins_kind"), ["kind"], unique=False)

    op.create_table(
        "samples",
        sa.Column(
            "series_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("series_id", "ts", name=op.f("pk_samples")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "samples_1h",
        sa.Column(
            "series_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("last", sa.Float(), nullable=False),
        sa.Column("last_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("series_id", "ts", name=op.f("pk_samples_1h")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "samples_1m",
        sa.Column(
            "series_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("last", sa.Float(), nullable=False),
        sa.Column("last_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("series_id", "ts", name=op.f("pk_samples_1m")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "series",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("source_kind", sa.String(length=20), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("plugin_id", sa.String(length=64), nullable=True),
        sa.Column(
            "labels",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("unit", sa.String(length=32), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint("hash", name=op.f("uq_series_hash")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.create_index("ix_series_name", ["name"], unique=False)
        batch_op.create_index("ix_series_plugin_name", ["plugin_id", "name"], unique=False)
        batch_op.create_index(
            "ix_series_source", ["source_kind", "source_id", "name"], unique=False
        )
    if is_postgres:
        # Label-containment lookups (labels @> '{"mount": "/"}') use this index.
        op.create_index("ix_series_labels", "series", ["labels"], postgresql_using="gin")

    op.create_table(
        "alert_history",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("rule_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("series_key", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=20), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["alert_rules.id"],
            name=op.f("fk_alert_history_rule_id_alert_rules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_history")),
    )
    with op.batch_alter_table("alert_history", schema=None) as batch_op:
        batch_op.create_index("ix_alert_history_rule_ts", ["rule_id", "ts"], unique=False)
        batch_op.create_index("ix_alert_history_tenant_ts", ["tenant_id", "ts"], unique=False)

    op.create_table(
        "alert_states",
        sa.Column("rule_id", sa.Uuid(), nullable=False),
        sa.Column("series_key", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("pending_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("firing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["alert_rules.id"],
            name=op.f("fk_alert_states_rule_id_alert_rules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rule_id", "series_key", name=op.f("pk_alert_states")),
    )
    with op.batch_alter_table("alert_states", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_states_state"), ["state"], unique=False)

    op.create_table(
        "plugin_instances",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("plugin_pk", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["plugin_pk"],
            ["plugins.id"],
            name=op.f("fk_plugin_instances_plugin_pk_plugins"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plugin_instances")),
        sa.UniqueConstraint(
            "plugin_pk", "tenant_id", "name", name=op.f("uq_plugin_instances_plugin_pk")
        ),
    )
    with op.batch_alter_table("plugin_instances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plugin_instances_enabled"), ["enabled"], unique=False)
        batch_op.create_index(
            "ix_plugin_instances_enabled_plugin", ["enabled", "plugin_pk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_plugin_instances_plugin_pk"), ["plugin_pk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_plugin_instances_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "plugin_executions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("plugin_id", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("metrics_count", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["plugin_instances.id"],
            name=op.f("fk_plugin_executions_instance_id_plugin_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plugin_executions")),
    )
    with op.batch_alter_table("plugin_executions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_plugin_executions_instance_started", ["instance_id", "started_at"], unique=False
        )
        batch_op.create_index(
            "ix_plugin_executions_plugin_started", ["plugin_id", "started_at"], unique=False
        )
        batch_op.create_index("ix_plugin_executions_started", ["started_at"], unique=False)

    op.create_table(
        "plugin_status",
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("health", sa.String(length=20), nullable=False),
        sa.Column("last_run", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sample_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consecutive_errors", sa.Integer(), nullable=False),
        sa.Column("success_count", sa.Integer(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("last_duration_ms", sa.Float(), nullable=True),
        sa.Column("health_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["plugin_instances.id"],
            name=op.f("fk_plugin_status_instance_id_plugin_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_plugin_status")),
    )
    with op.batch_alter_table("plugin_status", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plugin_status_health"), ["health"], unique=False)

    op.create_table(
        "snapshots",
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("plugin_id", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["plugin_instances.id"],
            name=op.f("fk_snapshots_instance_id_plugin_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_snapshots")),
    )
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_snapshots_plugin_id"), ["plugin_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_snapshots_plugin_id"))

    op.drop_table("snapshots")
    with op.batch_alter_table("plugin_status", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_status_health"))

    op.drop_table("plugin_status")
    with op.batch_alter_table("plugin_executions", schema=None) as batch_op:
        batch_op.drop_index("ix_plugin_executions_started")
        batch_op.drop_index("ix_plugin_executions_plugin_started")
        batch_op.drop_index("ix_plugin_executions_instance_started")

    op.drop_table("plugin_executions")
    with op.batch_alter_table("plugin_instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_instances_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_plugin_instances_plugin_pk"))
        batch_op.drop_index("ix_plugin_instances_enabled_plugin")
        batch_op.drop_index(batch_op.f("ix_plugin_instances_enabled"))

    op.drop_table("plugin_instances")
    with op.batch_alter_table("alert_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_states_state"))

    op.drop_table("alert_states")
    with op.batch_alter_table("alert_history", schema=None) as batch_op:
        batch_op.drop_index("ix_alert_history_tenant_ts")
        batch_op.drop_index("ix_alert_history_rule_ts")

    op.drop_table("alert_history")
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_index("ix_series_source")
        batch_op.drop_index("ix_series_plugin_name")
        batch_op.drop_index("ix_series_name")

    op.drop_table("series")
    op.drop_table("samples_1m")
    op.drop_table("samples_1h")
    op.drop_table("samples")
    with op.batch_alter_table("plugins", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugins_kind"))
        batch_op.drop_index(batch_op.f("ix_plugins_category"))

    op.drop_table("plugins")
    with op.batch_alter_table("alert_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_rules_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_alert_rules_metric_name"))

    op.drop_table("alert_rules")
