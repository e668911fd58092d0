"""`python -m bench.api_server --port P`: the API exactly as `broadcaster api` serves it, plus
`GET /bench/bare`, a route that does nothing, so the API benchmark measures our route and
the framework's ceiling in the same server, under the same load."""

from __future__ import annotations

import argparse

from broadcaster.api import create_app

app = create_app()


@app.get("/bench/bare", include_in_schema=False)
def bare() -> dict[str, bool]:
    """A sync route like ours (FastAPI runs it in its thread pool), with no work in it."""
    return {"ok": True}


def main() -> None:
    import uvicorn

    from broadcaster.logs import configure_logging
    from broadcaster.settings import get_settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    configure_logging(get_settings(), "api")
    # The same options as broadcaster.cli's `api` command.
    uvicorn.run(
        "bench.api_server:app",
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        log_config=None,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
