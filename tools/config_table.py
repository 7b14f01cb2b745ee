"""The README's configuration table, written from the settings' own descriptions.

    python -m tools.config_table          # rewrite the table in README.md
    python -m tools.config_table --check  # exit 1 when README.md differs (tests/test_config_table.py)

Each row is one field of `modelport.config.Settings`: its variable, its default (a field's
`json_schema_extra={"readme_default": ...}` where the value alone would not say it), and its
description. The CLI reads two variables outside Settings (it needs no server configuration);
they are listed in OUTSIDE_SETTINGS with their reader.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import SecretStr

from modelport.config import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- config-table: begin -->", "<!-- config-table: end -->"

#: Variables read outside Settings: (variable, default, meaning).
OUTSIDE_SETTINGS = [
    ("MODELPORT_URL", "`http://127.0.0.1:8000`", "the CLI: the server it talks to"),
    ("MODELPORT_API_KEY", "`$MODELPORT_HOME/admin.key`", "the CLI: the API key it sends"),
]


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "readme_default" in extra:
        return str(extra["readme_default"])
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "set"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value)}`" if value else ("`{}`" if isinstance(value, dict) else "empty")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        text = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {_default(name)} | {text} |")
    for var, default, text in OUTSIDE_SETTINGS:
        rows.append(f"| `{var}` | {default} | {text} |")
    return "\n".join(rows)


def rewritten(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    text = README.read_text()
    new = rewritten(text)
    if "--check" in argv:
        if new != text:
            print("README.md's configuration table differs from modelport/config.py; run python -m tools.config_table")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
