"""The README's configuration reference lists every setting, so operators can trust it."""

import re
from pathlib import Path

from broadcaster.core.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readmes_configuration_reference():
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \| `BROADCASTER_", README.read_text(), re.MULTILINE))
    missing = sorted(set(Settings.model_fields) - documented)
    assert missing == []


def test_the_readme_names_the_two_fresh_machine_commands_near_its_top():
    top = README.read_text().splitlines()[:30]
    assert any("./scripts/demo" in line and "broadcaster demo" in line for line in top)
    assert any("./scripts/test" in line for line in top)


def test_the_example_brands_file_is_valid():
    from broadcaster.core.brands import parse_brands

    example = README.parent / "config" / "brands.example.yaml"
    brands = parse_brands(example.read_text(), str(example))
    assert brands.require("acme").channels == ["bluesky", "mastodon", "telegram", "sms", "rss"]
