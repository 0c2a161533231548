"""The web layer: the JSON API (``/api/v1``), the operations console (``/console``) and the tenant portal
(``/portal``), one FastAPI application built by ``powergate.web.app.create_app``.

The foundation here (settings, authentication, CSRF, idempotency, i18n, metrics, security headers) is shared;
the routers are discovered from the ``api``, ``console`` and ``portal`` packages, so adding a page or an endpoint
never edits a shared file.
"""
