"""Storage: one SQLAlchemy Core implementation for SQLite and Postgres, and its migrations."""
