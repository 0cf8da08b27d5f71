"""The defaults the docs state are the settings model's (issue #18, item 9): a value changed in
one place and not the other fails here instead of misleading an operator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from emomon.services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
_NUMBER = re.compile(r"-?\d[\d_]*(\.\d+)?")
_NOT_READ = object()  # a documented value this test cannot read unambiguously


def _literal(text: str) -> Any:
    """A documented default as a Python value, or ``_NOT_READ`` when it is prose."""
    text = text.strip().strip("`")
    if not text or " " in text or text.startswith("<"):  # prose or a placeholder (<hostname>)
        return _NOT_READ
    if _NUMBER.fullmatch(text):
        return float(text.replace("_", ""))
    # "off" and "random" are how the docs say a None default (no port; a generated client id)
    words = {"true": True, "false": False, "none": None, "off": None, "random": None}
    return {**words, "[]": (), "{}": {}}.get(text, text)


def _default(section: str, name: str) -> Any:
    value = getattr(getattr(Settings(), section), name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _table_rows(doc: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with ``header``."""
    lines = (ROOT / doc).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _readme_pairs() -> list[tuple[str, str, Any]]:
    """``(section, field, value)`` from the README's ``| section | main fields (defaults) |``."""
    pairs = []
    for section_cell, fields in _table_rows("README.md", "| section | main fields (defaults) |"):
        section = section_cell.strip("`")
        # "`name` value" up to the next comma, semicolon or parenthesis
        for m in re.finditer(r"`(\w+)` ([^,;(`]+)", fields):
            value = _literal(m[2])
            if value is not _NOT_READ:
                pairs.append((section, m[1], value))
    return pairs


def _settings_table_pairs(doc: str, header: str, section: str = "") -> list[tuple[str, str, Any]]:
    """``(section, field, value)`` from a ``| setting | default | meaning |`` table; a row may name
    several settings and values separated by `` / ``."""
    pairs = []
    for names, values, *_ in _table_rows(doc, header):
        keys = re.findall(r"`([\w.]+)`", names.split("(")[0])
        shown = [v.strip() for v in values.split(" / ")]
        if len(shown) == 1:
            shown *= len(keys)
        for key, raw in zip(keys, shown, strict=True):
            value = _literal(raw)
            if value is _NOT_READ:
                continue
            sec, _, name = key.rpartition(".")
            pairs.append((sec or section, name, value))
    return pairs


DOCUMENTED = [
    *(("README.md", *p) for p in _readme_pairs()),
    *(
        ("docs/DISTRIBUTED.md", *p)
        for p in _settings_table_pairs("docs/DISTRIBUTED.md", "| setting | default |")
    ),
    *(
        ("docs/MQTT.md", *p)
        for p in _settings_table_pairs("docs/MQTT.md", "| setting (`--set mqtt.X=`", "mqtt")
    ),
    *(
        ("docs/RTP.md", *p)
        for p in _settings_table_pairs("docs/RTP.md", "| setting | default |", "source")
    ),
]


def test_the_tables_were_read() -> None:
    """Guards the parser: the values issue #18 found wrong are among those compared."""
    read = {(doc, f"{sec}.{name}") for doc, sec, name, _ in DOCUMENTED}
    for doc in ("README.md", "docs/DISTRIBUTED.md"):
        assert {(doc, "redis.maxlen"), (doc, "worker.max_wait_ms")} <= read
    assert len(DOCUMENTED) >= 50


@pytest.mark.parametrize(
    ("doc", "section", "name", "documented"),
    DOCUMENTED,
    ids=[f"{d}:{s}.{n}" for d, s, n, _ in DOCUMENTED],
)
def test_documented_default_matches_the_settings(
    doc: str, section: str, name: str, documented: Any
) -> None:
    assert name in type(getattr(Settings(), section)).model_fields, f"{doc} names {section}.{name}"
    assert _default(section, name) == documented, f"{doc} says {section}.{name} = {documented!r}"


def test_distributed_sizing_names_the_maxlen_default() -> None:
    text = (ROOT / "docs/DISTRIBUTED.md").read_text()
    sizing = text.split("### Sizing `maxlen`", 1)[1]
    stated = re.search(r"The default ([\d  ,]+) is", sizing)
    assert stated, "the Sizing section no longer states the default maxlen"
    assert int(re.sub(r"\D", "", stated[1])) == Settings().redis.maxlen
