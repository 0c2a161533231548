"""Persistence: tables, repositories and migrations (SQLite by default, PostgreSQL in production)."""
