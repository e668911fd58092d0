"""The demo's settings (no stack: just what it would run with)."""

from __future__ import annotations


def test_the_demo_trips_by_the_shipped_rule():
    """The demo speeds the clock up, not the breaker: a window of its own could not trip by the
    7-in-a-row rule the defaults use."""
    from broadcaster.ops.demo import DEMO_SETTINGS

    rule = ("WINDOW", "DEGRADE_AFTER", "TRIP_AFTER", "CONFIRM_AFTER", "RECOVER_AFTER")
    assert not [k for k in DEMO_SETTINGS if k.removeprefix("BROADCASTER_HEALTH_") in rule]
