"""The failover-reaction benchmark, run tiny (the longest smoke run: a file of its own, so that
xdist runs it beside the other benchmarks and the chaos tests). As in test_bench_smoke.py, no
timing is asserted, only that every trial ran and the JSON holds what the docs report."""

from __future__ import annotations

import pytest

from bench.run import run_one
from tests.bench.test_bench_smoke import saved

pytestmark = [pytest.mark.bench, pytest.mark.integration]


def test_it_measures_a_failover_reaction_for_every_trial():
    run_one("failover_reaction", smoke=True, overrides={})
    data = saved("failover_reaction")
    smoke = data["profiles"]["smoke"]
    assert smoke["reacted"] == smoke["trials"] == 2
    assert all(v is not None and v > 0 for v in smoke["reaction_s"].values())
    assert set(smoke["distribution"]) == {"n", "min", "p50", "p90", "max"}
    assert smoke["target_s"] == 0.25 * 3 + 2
    for fault in ("error", "hang"):  # both injected; a miss would count, not vanish
        detect, recover = smoke["faults"][fault]["detect"], smoke["faults"][fault]["recover"]
        assert detect["n"] == recover["n"] == 2
        assert detect["missed"] == recover["missed"] == 0
        assert 0 < detect["p50"] <= detect["max"]
        assert 0 < recover["p50"] <= recover["max"]
    assert smoke["false_trips"]["per_year_bound"] > 0
    assert smoke["probe_requests_per_target_per_min"] > 0
    assert data["machine"]["cpus"] >= 1
