"""Fixtures of the integration tests that break the outage fake."""

from __future__ import annotations

import pytest

from tests.integration.outage import ADMIN, health, target_of, wait_effective


@pytest.fixture
def healthy(api, stack):
    """Each test starts and ends with the outage PDS healed, no override, and the target up."""
    fake = stack.outage_bluesky

    def settle():
        fake.heal()
        if health(api, stack)["override"] is not None:
            url = f"/v1/health/{target_of(stack)}/override"
            api.post(url, json={"mode": "auto", "reason": "test cleanup"}, headers=ADMIN)
        wait_effective(api, stack, "up")

    settle()
    yield fake
    settle()
