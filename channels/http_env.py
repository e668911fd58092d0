"""Read requests' environment settings once per client, not on every request.

A `requests.Session` with `trust_env` looks up proxies (and `no_proxy`) and the CA bundle in
the environment for every request: 9 % of a worker's CPU per Mastodon delivery (py-spy). A
channel's client talks to one base URL, so the answer is the same each time; reading it when
the client is made keeps the behaviour (proxies, `NO_PROXY`, `REQUESTS_CA_BUNDLE`) and drops
the cost. It also keeps a `~/.netrc` entry from replacing the channel's own credentials.
"""

from __future__ import annotations

import os

import requests


def read_environment_once(session: requests.Session, base_url: str) -> requests.Session:
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(base_url)
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return session
