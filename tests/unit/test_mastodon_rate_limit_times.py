"""The rate-limit headers are read with the standard library (dateutil cost a worker ~1.6 % of
its CPU, and Mastodon.py's own reading of them another 4 % at a backlog) and the times still
agree with Mastodon.py's reading, which is dateutil's."""

from __future__ import annotations

from datetime import UTC

import dateutil.parser
import pytest

from channels.mastodon import header_epoch

VALUES = [
    "1796472939",  # GoToSocial: an epoch
    "2026-12-05T23:50:00.000Z",  # Mastodon's X-RateLimit-Reset
    "2026-12-05T23:50:00.123456+00:00",
    "2026-12-05T23:50:00+02:00",
    "2026-12-05T23:50:00",  # no zone: UTC, as Mastodon.py reads it
    "Sat, 05 Dec 2026 23:50:00 GMT",  # an HTTP Date
    "Sat, 45 Dec 2026 23:50:00 GMT",  # the shape of a date, not a date
    "Sat, 05 Foo 2026 23:50:00 GMT",
    "2026-13-05T23:50:00Z",
    "2026-12-05T25:00:00Z",
    "2026-12-05Tnoon",
    "not a time",
    "yesterday-ish",
    "",
]


def mastodon_py_reads(value: str) -> float | None:
    """What Mastodon.py does with the header (`internals.py`): an int, else dateutil, a time
    without a zone taken as UTC (`__datetime_to_epoch`); None where it raises."""
    try:
        if str(int(value)) == value:
            return int(value)
    except ValueError:
        pass
    try:
        when = dateutil.parser.parse(value)
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        return None


@pytest.mark.parametrize("value", VALUES)
def test_the_reading_agrees_with_mastodon_py(value):
    assert header_epoch(value) == mastodon_py_reads(value)


def test_the_usual_forms_are_readable():
    assert all(header_epoch(v) is not None for v in VALUES[:6])
    assert header_epoch("Sat, 05 Dec 2026 23:50:00 GMT") == header_epoch("2026-12-05T23:50:00Z")
