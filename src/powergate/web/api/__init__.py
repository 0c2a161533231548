"""JSON API routers, mounted under ``/api/v1``: every module here with a module-level ``router`` is included."""
