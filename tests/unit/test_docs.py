"""The docs stay true: every setting is in the configuration reference, the README's first
screen is enough to run the demo and the tests, and every example's variables are defined."""

import re
from pathlib import Path

import pytest

from broadcaster.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
FIRST_SCREEN = 40  # lines


def test_every_setting_is_in_the_configuration_reference():
    documented = set(
        re.findall(r"^\| `([a-z0-9_]+)` \| `BROADCASTER_", CONFIGURATION.read_text(), re.MULTILINE)
    )
    missing = sorted(set(Settings.model_fields) - documented)
    assert missing == []


def test_the_readmes_first_screen_says_what_it_is_how_to_run_it_and_where_to_go_next():
    top = README.read_text().splitlines()[:FIRST_SCREEN]
    assert any("./scripts/demo" in line and "broadcaster demo" in line for line in top)
    assert any("./scripts/test" in line for line in top)
    assert any("minutes" in line for line in top)  # how long
    for doc in ("docs/api.md", "docs/configuration.md", "docs/runbook.md", "CONTRIBUTING.md"):
        assert any(f"({doc})" in line for line in top), doc
        assert (ROOT / doc).is_file()


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.DOTALL)


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md", "docs/configuration.md", "docs/runbook.md"])
def test_every_variable_an_example_uses_is_defined_in_the_same_page(doc):
    text = (ROOT / doc).read_text()
    code = "\n".join(_shell_blocks(text))
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", code))
    defined = set(re.findall(r"(?:^|;)\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=", code, re.MULTILINE))
    defined |= {name for name in used if name.startswith("BROADCASTER_")}  # a documented setting
    assert sorted(used - defined) == []


def test_the_brand_page_screenshot_is_in_the_docs():
    assert (ROOT / "docs" / "img" / "brand-page.png").read_bytes().startswith(b"\x89PNG")
    assert "(img/brand-page.png)" in (ROOT / "docs" / "runbook.md").read_text()


def test_the_example_brands_file_is_valid():
    from broadcaster.core.brands import parse_brands

    example = ROOT / "config" / "brands.example.yaml"
    brands = parse_brands(example.read_text(), str(example))
    assert brands.require("acme").channels == ["bluesky", "mastodon", "telegram", "sms", "rss"]
    assert brands.require("acme").page.sms_keyword == "JOIN"
