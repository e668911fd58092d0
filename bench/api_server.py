"""`python -m bench.api_server --port P`: the API exactly as `broadcaster api` serves it (same
uvicorn options, as many worker processes: BROADCASTER_API_WORKERS), plus `GET /bench/bare`,
a route that does nothing, so the API benchmark measures our route and the framework's
ceiling in the same server, under the same load."""

from __future__ import annotations

import argparse

from fastapi import FastAPI

from broadcaster.api import create_served_app


def bare() -> dict[str, bool]:
    """A sync route like ours (FastAPI runs it in its thread pool), with no work in it."""
    return {"ok": True}


def create_bench_app() -> FastAPI:
    """What each worker process serves: the API's app and the bare route."""
    app = create_served_app()
    app.get("/bench/bare", include_in_schema=False)(bare)
    return app


def main() -> None:
    from broadcaster.api.server import serve, uvicorn_options
    from broadcaster.common.logs import configure_logging
    from broadcaster.core.settings import get_settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=None, help="default BROADCASTER_API_WORKERS")
    args = parser.parse_args()
    configure_logging(get_settings(), "api")
    serve(
        "bench.api_server:create_bench_app",
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        **uvicorn_options(args.workers),
    )


if __name__ == "__main__":
    main()
