"""Tenant portal routers, mounted under ``/portal``: every module here with a ``router`` is included."""
