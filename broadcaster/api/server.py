"""How `broadcaster api` serves the app: uvicorn, one or several worker processes.

Each request's work is Python CPU, so one process is bounded by one core (its GIL); the
API is stateless (Redis holds everything), so worker processes sharing the port scale it
on a host, as more hosts behind a load balancer scale it further.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

APP = "broadcaster.api.app:create_served_app"
WORKER_HEALTHCHECK_S = 30


def uvicorn_options(workers: int | None = None) -> dict[str, Any]:
    """uvicorn's options for the API; the API benchmark serves with the same ones."""
    from broadcaster.core.settings import get_settings

    return {
        "factory": True,  # each worker process builds the app (and sets up its logging)
        "workers": workers or get_settings().api_workers,
        "log_config": None,
        "proxy_headers": True,
        "timeout_graceful_shutdown": 10,
        # With several workers uvicorn pings each child and kills one that does not answer in
        # this time; a spawned child answers only once its imports are done, which took over
        # uvicorn's 5 s on a busy two-core host: children were killed and respawned over and
        # over, and the API took minutes to answer at all. A hung child is still replaced.
        "timeout_worker_healthcheck": WORKER_HEALTHCHECK_S,
    }


def serve(app: str = APP, **options: Any) -> None:
    """`uvicorn.run(app, **options)`, except that with several workers the shared listening
    socket is declared TCP, so every connection gets TCP_NODELAY (see `tcp_listener`)."""
    import uvicorn

    if options.get("workers", 1) <= 1:
        uvicorn.run(app, **options)
        return
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(app, **options)
    sock = tcp_listener(config.bind_socket())
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
        Multiprocess(config, sockets=[sock]).run()


def tcp_listener(sock: socket.socket) -> socket.socket:
    """The same listening socket, with its protocol recorded as TCP.

    uvicorn's `Config.bind_socket` (what `--workers N` uses) leaves `proto` at 0; accepted
    connections inherit it, and asyncio sets TCP_NODELAY only on sockets whose proto is
    IPPROTO_TCP. Without it, Nagle holds the body of each keep-alive response until the
    client's delayed ACK: about 40 ms added to every request on Linux (uvicorn issue #3149;
    measured here: bare-route p50 3 ms with one worker, 46 ms with two). A no-op once
    uvicorn records the protocol itself.
    """
    if (
        sock.family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_STREAM
        and sock.proto != socket.IPPROTO_TCP
    ):
        fixed = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        fixed.set_inheritable(True)
        return fixed
    return sock
