"""The reference schema. Migrations must produce exactly this (tests/storage checks it)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

keys = Table(
    "faregate_keys", metadata,
    Column("token", String(64), primary_key=True),
    Column("key_name", String(64), nullable=False),
    Column("key_alias", String(256), nullable=True, unique=True),
    Column("models", Text, nullable=False, default="[]"),
    Column("max_budget_nanos", BigInteger, nullable=True),
    Column("spend_nanos", BigInteger, nullable=False, default=0),
    Column("period_base_nanos", BigInteger, nullable=False, default=0),
    Column("budget_duration", String(32), nullable=True),
    Column("budget_reset_at", DateTime(timezone=True), nullable=True),
    Column("expires", DateTime(timezone=True), nullable=True),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("tpm_limit", Integer, nullable=True),
    Column("rpm_limit", Integer, nullable=True),
    Column("max_parallel_requests", Integer, nullable=True),
    Column("blocked", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("model_rpm_limit", Text, nullable=False, default="{}"),
    Column("model_tpm_limit", Text, nullable=False, default="{}"),
    Column("aliases", Text, nullable=False, default="{}"),
)

spend_logs = Table(
    "faregate_spend_logs", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("api_key", String(64), nullable=False),
    Column("key_alias", String(256), nullable=True),
    Column("model", String(256), nullable=False),
    Column("upstream", String(512), nullable=False),
    Column("call_type", String(32), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("spend_nanos", BigInteger, nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),
    Index("ix_spend_logs_api_key_start", "api_key", "start_time"),
    Index("ix_spend_logs_start", "start_time"),
)

models = Table(
    "faregate_models", metadata,
    Column("id", String(64), primary_key=True),
    Column("model_name", String(256), nullable=False),
    Column("litellm_params", Text, nullable=False),      # JSON; secret fields sealed (sealing.py)
    Column("model_info", Text, nullable=False, default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_models_model_name", "model_name"),
)

replicas = Table(
    "faregate_replicas", metadata,
    Column("replica_id", String(64), primary_key=True),
    Column("host", String(256), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),     # the database's clock
    Column("last_seen", DateTime(timezone=True), nullable=False),      # the database's clock
    Column("shares_admission", Boolean, nullable=False),               # admits through Redis
)
