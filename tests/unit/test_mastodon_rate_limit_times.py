"""The rate-limit header check reads the usual forms with the standard library (dateutil costs
a worker ~1.6 % of its CPU) and still agrees with Mastodon.py, which reads them with dateutil."""

from __future__ import annotations

import dateutil.parser
import pytest

from channels.mastodon import _readable_time

VALUES = [
    "1796472939",  # GoToSocial: an epoch
    "2026-12-05T23:50:00.000Z",  # Mastodon's X-RateLimit-Reset
    "2026-12-05T23:50:00.123456+00:00",
    "2026-12-05T23:50:00",
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


def mastodon_py_reads(value: str) -> bool:
    """What Mastodon.py does with the header (`internals.py`): an int, else dateutil."""
    try:
        int(value)
        return True
    except ValueError:
        pass
    try:
        dateutil.parser.parse(value).timestamp()
        return True
    except (ValueError, OverflowError):
        return False


@pytest.mark.parametrize("value", VALUES)
def test_the_check_agrees_with_mastodon_py(value):
    assert _readable_time(value) is mastodon_py_reads(value)


def test_the_usual_forms_are_readable():
    assert all(_readable_time(v) for v in VALUES[:5])
