"""One TLS context per process for the HTTP clients we make often.

httpx builds a new `ssl.SSLContext` for every client, and loading the CA bundle into it is most
of what a fresh client costs: 65 % of a probe worker's CPU went to `ssl.create_default_context`
(py-spy), because the health watcher opens a fresh client for every probe on purpose (its own
short timeout, no pooled connection that could hide a failure). The context is the same each
time, so each process builds it once; an `SSLContext` may be shared by clients and threads.
What it trusts is read from the environment (`SSL_CERT_FILE`, `SSL_CERT_DIR`) when it is first
used, as httpx reads it per client.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def client_context(trust_env: bool = True) -> ssl.SSLContext:
    """httpx's default verifying context (certifi's bundle, or the environment's with `trust_env`)."""
    return httpx.create_ssl_context(trust_env=trust_env)
