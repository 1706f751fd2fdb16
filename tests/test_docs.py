"""The documentation cannot drift from the code.

- docs/configuration.md carries the exact table ``fanline settings`` prints;
- docs/protocol.md names every error code and close code of node/errors.py, and every reset reason.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

import pytest

from node import errors, resume
from node.settings import markdown_table

DOCS = Path(__file__).resolve().parent.parent / "docs"
BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"


def _constants(cls: type) -> dict[str, object]:
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return {member.name: member.value for member in cls}
    return {name: value for name, value in vars(cls).items() if name.isupper()}


def test_configuration_table_matches_the_settings() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"docs/configuration.md lost its {BEGIN} / {END} markers"
    documented = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert documented == markdown_table(), (
        "docs/configuration.md is out of date with node/settings.py: replace the table between the "
        "settings markers with the output of `.venv/bin/fanline settings`"
    )


@pytest.mark.parametrize("name,code", sorted(_constants(errors.ErrorCode).items()))
def test_every_error_code_is_documented(name: str, code: object) -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    assert f"`{code}`" in text, f"ErrorCode.{name} ({code!r}) is not documented in docs/protocol.md"


@pytest.mark.parametrize("name,code", sorted(_constants(errors.CloseCode).items()))
def test_every_close_code_is_documented(name: str, code: object) -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    row = re.search(rf"^\| {code} \| `{name}` \|", text, re.MULTILINE)
    assert row is not None, f"CloseCode.{name} ({code}) has no row in the close code table of docs/protocol.md"


@pytest.mark.parametrize("name,reason", sorted(_constants(resume.ResetReason).items()))
def test_every_reset_reason_is_documented(name: str, reason: object) -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    assert f"| `{reason}` |" in text, f"ResetReason.{name} ({reason!r}) has no row in docs/protocol.md"
