"""The results table of docs/RELIABILITY.md, rebuilt from the scenarios' JSON results.

Each scenario writes artifacts/reliability/<scenario>.json (see conftest.record); this module
turns all of them into the table between the markers in docs/RELIABILITY.md, so the page always
shows the last measured figures. A row whose scenario has no result here (the soak, in a fresh
clone or a CI run that skips it) is kept as the page has it. Run it alone with
`python -m tests.reliability.report`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "artifacts" / "reliability"
DOC = REPO / "docs" / "RELIABILITY.md"
BEGIN = "<!-- results:begin (written by tests/reliability; do not edit) -->"
END = "<!-- results:end -->"

# Figures shown in their own columns; the rest go to "other measurements".
COLUMNS = (
    ("samples_lost", "lost"),
    ("samples_duplicated", "dup"),
    ("recovery_s", "recovery s"),
    ("max_buffered_s", "max buffered s"),
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(entries: list[dict[str, Any]]) -> str:
    head = "| scenario | promise | verdict | " + " | ".join(c[1] for c in COLUMNS)
    head += " | other measurements | run |"
    rule = "|" + "---|" * (len(COLUMNS) + 5)
    rows = [head, rule]
    for e in entries:
        figures = dict(e["figures"])
        cells = [_cell(figures.pop(key, None)) for key, _ in COLUMNS]
        other = ", ".join(f"{k}={_cell(v)}" for k, v in figures.items())
        rows.append(
            f"| {e['scenario']} | {e['promise']} | {e.get('verdict', '-')} | "
            + " | ".join(cells)
            + f" | {other} | "
            f"{e['when']} |"
        )
    return "\n".join(rows)


def _kept_rows(table_text: str, measured: set[str]) -> list[str]:
    """Rows of the page's table for scenarios with no result file now."""
    rows = [line for line in table_text.splitlines() if line.startswith("| ")]
    return [r for r in rows[1:] if r.split("|")[1].strip() not in measured]


def write_table() -> None:
    entries = [json.loads(p.read_text()) for p in sorted(RESULTS_DIR.glob("*.json"))]
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    before, rest = text.split(BEGIN, 1)
    old, after = rest.split(END, 1)
    kept = _kept_rows(old, {str(e["scenario"]) for e in entries})
    lines = table(entries).splitlines()
    body = sorted(lines[2:] + kept, key=lambda row: row.split("|")[1].strip())
    rows = "\n".join(lines[:2] + body)
    DOC.write_text(f"{before}{BEGIN}\n{rows}\n{END}{after}")


if __name__ == "__main__":
    write_table()
