"""The sweeper records each finished pass in the ledger (it sends no task events), so the tests'
`wait_quiet` can prove a full pass ran after a moment."""

from __future__ import annotations

import pytest

from broadcaster.ledger.readiness import last_sweep_started, record_sweep
from tests import channel_direct

pytestmark = pytest.mark.integration


def test_the_latest_start_is_kept_even_when_an_older_pass_finishes_last(direct_redis):
    settings = channel_direct.settings()
    assert last_sweep_started(direct_redis, settings) == 0.0
    record_sweep(direct_redis, settings, 1_000.5)
    record_sweep(direct_redis, settings, 900.0)  # a slow pass that started earlier ends later
    assert last_sweep_started(direct_redis, settings) == 1_000.5
    record_sweep(direct_redis, settings, 1_001.25)
    assert last_sweep_started(direct_redis, settings) == 1_001.25
