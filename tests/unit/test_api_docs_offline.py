"""/docs and /redoc work without internet: every asset they load comes from this server."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from broadcaster.api.app import create_app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def _asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html) + re.findall(
        r"""url\s*:\s*['"]([^'"]+)['"]""", html
    )


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_reference_only_local_urls_and_each_answers(client, page):
    answer = client.get(page)
    assert answer.status_code == 200
    assert "cdn" not in answer.text.lower()
    assert "fonts.googleapis" not in answer.text
    assert "validator.swagger.io" not in answer.text
    urls = _asset_urls(answer.text)
    assert any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        assert client.get(url).status_code == 200, url


def test_the_openapi_schema_the_docs_read_is_served(client):
    assert client.get("/openapi.json").json()["info"]["title"] == "Failover Broadcaster"
