"""Use cases: each takes a command and a unit of work."""
