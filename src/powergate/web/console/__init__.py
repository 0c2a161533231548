"""Operations console routers, mounted under ``/console``: every module here with a ``router`` is included."""
