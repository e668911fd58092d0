"""The REST API. The ASGI app is `broadcaster.api:app` (served by `broadcaster api`)."""

from broadcaster.api.app import create_app

app = create_app()

__all__ = ["app", "create_app"]
