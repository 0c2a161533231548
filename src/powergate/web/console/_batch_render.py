"""Rendering the batch and billing console pages: the console's layout with a catalog that also holds their
messages (``_i18n_batch.MESSAGES``).

Until the lead merges ``_i18n_batch.MESSAGES`` into the console's ``CATALOG``, the keys not there yet are
added here; once merged, nothing is added twice (keys already in ``CATALOG`` are skipped), so both states work.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from powergate.web.console._i18n import CATALOG
from powergate.web.console._i18n_batch import MESSAGES
from powergate.web.console._render import render
from powergate.web.deps import Principal
from powergate.web.i18n import Catalog, language

BATCH_CATALOG = CATALOG.merged(Catalog({k: v for k, v in MESSAGES.items() if k not in CATALOG}))


def render_b(request: Request, name: str, principal: Principal, *, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    """``render`` with the batch / billing messages in ``t``."""
    return render(request, name, principal, status_code=status_code, t=BATCH_CATALOG.gettext(language(request)), **ctx)
