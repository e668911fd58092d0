"""Is a TCP port free to listen on? Asked before starting a server, so a busy port gets a
message naming the port and the flag that changes it, not uvicorn's "[Errno 98]"."""

from __future__ import annotations

import socket


def in_use(host: str, port: int) -> bool:
    """True when nothing can listen on host:port now (bound as uvicorn binds: SO_REUSEADDR,
    so a port left in TIME_WAIT by a server that just stopped counts as free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def busy(host: str, wanted: list[tuple[int, str]]) -> str | None:
    """The message for the first busy (port, flag) of `wanted`, or None when all are free."""
    for port, flag in wanted:
        if in_use(host, port):
            return (
                f"port {port} on {host} is already in use (another `broadcaster up`, `demo` or API?). "
                f"Stop what uses it, or choose another port with {flag}, e.g. {flag} {_suggest(host, port)}"
            )
    return None


def _suggest(host: str, port: int) -> int:
    for candidate in range(port + 1, min(port + 50, 65536)):
        if not in_use(host, candidate):
            return candidate
    return port + 1
