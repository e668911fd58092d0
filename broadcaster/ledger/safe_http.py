"""HTTP to a URL a brand gave us (its webhooks, an image to fetch), without reaching our own network.

A brand's URL names a host; a host names addresses, and the answer may change between two
look-ups (DNS rebinding: public when checked, 127.0.0.1 when connected). So the check and the
connect are one step here: `PinnedBackend.connect_tcp` resolves the name once (`resolve`),
refuses the whole answer if any address is refused (`refused`), and connects to the very
addresses it checked. The request still names the host (Host header, TLS SNI and certificate
checks use the name); only the TCP connect goes to the checked address.

A receiver must not hold a worker or its memory: `post()` gives the whole exchange (connect,
send, the answer's headers and body) one wall-clock deadline, enforced on every socket
operation (`_DeadlineStream`), and reads at most `cap` bytes of the answer before closing the
connection.

`client()` is the one client for every server-side fetch of a brand's URL: no proxies from the
environment (a proxy would resolve the name itself), no redirects (a redirect could point the
request elsewhere).
"""

from __future__ import annotations

import contextvars
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from broadcaster.ledger.tls import client_context

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int | None], list[str]]


class AddressRefused(ValueError):
    """A URL's host is, or resolves to, an address we do not send to."""


_REFUSED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments (Python calls 192.0.0.9 and .10 global)
        "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible ::a.b.c.d
        "::ffff:0:0:0/96",  # IPv4-translated (RFC 2765)
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments, Teredo included
        "2001:db8::/32",
        "3fff::/20",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated; Python calls it global)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def refused(ip: IPAddress) -> bool:
    """True for an address a brand's URL must not reach: not public, or embedding one that is not."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return True
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return refused(embedded)
        if any(ip in n for n in _REFUSED_V6):
            return True
    elif any(ip in n for n in _REFUSED_V4):
        return True
    return not ip.is_global or ip.is_multicast


def resolve(host: str, port: int | None = None) -> list[str]:
    """The addresses of `host` (itself if it is an address), in the resolver's order."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    seen: list[str] = []
    for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def check_addresses(host: str, addresses: Iterable[str]) -> list[str]:
    """The addresses, if none is refused; raises AddressRefused naming the first that is."""
    checked = list(addresses)
    if not checked:
        raise AddressRefused(f"host {host} has no address")
    for a in checked:
        if refused(ipaddress.ip_address(a)):
            raise AddressRefused(
                f"points at a private or loopback address ({a}); "
                "set BROADCASTER_WEBHOOKS_ALLOW_PRIVATE=true to allow it"
            )
    return checked


# ---- the deadline ---------------------------------------------------------------------------------
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("safe_http_deadline", default=None)


def _budget(timeout: float | None, error: type[Exception]) -> float | None:
    """The timeout of one socket operation: at most what is left of the request's deadline."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes never outlast the current request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _budget(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, _budget(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


# ---- connecting ----------------------------------------------------------------------------------
class PinnedBackend(httpcore.NetworkBackend):
    """Resolve once, check what was resolved, connect to exactly that."""

    def __init__(self, allow_private: bool, resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = (self.resolver or resolve)(host, port)
        except OSError as e:
            raise httpcore.ConnectError(f"host {host} does not resolve ({e})") from e
        except UnicodeError as e:  # the resolver's IDNA step: a label over 63 characters, say
            raise AddressRefused(f"the host name is not valid ({e})") from None
        if not self.allow_private:
            addresses = check_addresses(host, addresses)
        last: Exception = httpcore.ConnectError(f"host {host} has no address")
        for address in addresses:
            try:
                budget = _budget(timeout, httpcore.ConnectTimeout)
                stream = self._inner.connect_tcp(address, port, budget, local_address, socket_options)
                return _DeadlineStream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        raise last

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise AddressRefused("unix sockets are not a brand's URL")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def transport(allow_private: bool, resolver: Resolver | None = None) -> httpx.HTTPTransport:
    """An httpx transport whose every connection goes through `PinnedBackend`."""
    t = httpx.HTTPTransport(verify=client_context(trust_env=False), trust_env=False)
    limits = httpx.Limits()
    # httpx has no parameter for the network backend: the pool it built is replaced by the same
    # pool over ours (tests/unit/test_safe_http.py would catch a change of that attribute).
    t._pool = httpcore.ConnectionPool(
        ssl_context=client_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=PinnedBackend(allow_private, resolver),
    )
    return t


def client(timeout_s: float, allow_private: bool, resolver: Resolver | None = None) -> httpx.Client:
    """The client for every server-side request to a URL a brand gave."""
    return httpx.Client(
        transport=transport(allow_private, resolver),
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        trust_env=False,
    )


# ---- one bounded exchange ------------------------------------------------------------------------
ANSWER_CAP = 64 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes  # at most the cap, as sent (not decompressed)
    truncated: bool  # the receiver had more to say; we closed the connection instead


def post(
    c: httpx.Client,
    url: str,
    content: bytes,
    headers: Mapping[str, str],
    deadline_s: float,
    cap: int = ANSWER_CAP,
) -> Answer:
    """POST and read at most `cap` bytes of the answer, all within `deadline_s` of wall-clock time.

    Raises httpx.TimeoutException when the deadline passes (the connection is closed), other
    httpx.HTTPError on network trouble, AddressRefused for a refused address.
    """
    return _exchange(c, "POST", url, content, headers, deadline_s, cap)


def get(
    c: httpx.Client, url: str, deadline_s: float, cap: int, headers: Mapping[str, str] | None = None
) -> Answer:
    """GET (an image a brand pointed us to) with the same deadline, cap and errors as `post`."""
    return _exchange(c, "GET", url, None, headers or {}, deadline_s, cap)


def _exchange(
    c: httpx.Client,
    method: str,
    url: str,
    content: bytes | None,
    headers: Mapping[str, str],
    deadline_s: float,
    cap: int,
) -> Answer:
    token = _DEADLINE.set(time.monotonic() + deadline_s)
    try:
        with c.stream(method, url, content=content, headers=dict(headers)) as r:
            body = bytearray()
            truncated = False
            for chunk in r.iter_raw():
                body += chunk
                if len(body) >= cap:
                    truncated = len(body) > cap or not r.is_stream_consumed
                    break
            # Leaving the block closes the response; one not read to its end closes the connection.
            return Answer(r.status_code, r.headers, bytes(body[:cap]), truncated)
    finally:
        _DEADLINE.reset(token)
