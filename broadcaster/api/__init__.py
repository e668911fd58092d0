"""The REST API. The ASGI app is `broadcaster.api:app`; `broadcaster api` serves
`broadcaster.api.app:create_served_app` (a factory: each worker process builds its own)."""

from broadcaster.api.app import create_app, create_served_app

app = create_app()

__all__ = ["app", "create_app", "create_served_app"]
