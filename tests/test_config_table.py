"""The README's configuration table is written from the settings' descriptions: every setting has
one, and the table in README.md is exactly what tools/config_table.py writes from them."""

from __future__ import annotations

from modelport.config import Settings, build_settings
from tools import config_table


def test_every_setting_has_a_description() -> None:
    assert [n for n, f in Settings.model_fields.items() if not (f.description or "").strip()] == []


def test_the_readme_table_is_the_settings_descriptions() -> None:
    text = config_table.README.read_text()
    assert config_table.rewritten(text) == text, "run: python -m tools.config_table"
    for name in Settings.model_fields:
        assert f"`MODELPORT_{name.upper()}`" in text


def test_a_change_of_a_description_shows_as_drift() -> None:
    text = config_table.README.read_text()
    field = Settings.model_fields["port"]
    before = field.description
    try:
        field.description = "Another meaning."
        assert config_table.rewritten(text) != text
    finally:
        field.description = before


def test_settings_come_from_the_mapping_through_the_prefix_and_never_from_os_environ() -> None:
    s = build_settings({"MODELPORT_PORT": "9001", "modelport_log_level": "DEBUG", "PORT": "1",
                        "MODELPORT_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16",
                        "MODELPORT_GEOGRAPHIES": '{"eu": ["eu-west"]}', "MODELPORT_REGION_SLOTS": '{"eu-west": 2}'})
    assert (s.port, s.log_level) == (9001, "DEBUG")
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert s.geographies == {"eu": ["eu-west"]} and s.region_slots == {"eu-west": 2}
    assert build_settings({}, port=1234).port == 1234  # explicit overrides win
    assert build_settings({"MODELPORT_PORT": "9001"}, port=1234).port == 1234


def test_bad_json_names_the_variable() -> None:
    import pytest
    with pytest.raises(ValueError, match="MODELPORT_GEOGRAPHIES must be JSON"):
        build_settings({"MODELPORT_GEOGRAPHIES": "{eu"})


def test_the_cache_directory_is_a_setting_that_safety_backends_receive_typed() -> None:
    """MODELPORT_CACHE_DIR is read like every other setting (no backend reads the environment):
    from the mapping, `~` expanded, and handed to safety backends as BackendSettings."""
    from pathlib import Path

    from modelport.safety.backends.base import BackendSettings

    assert build_settings({}).cache_dir == Path.home() / ".cache" / "modelport"
    s = build_settings({"MODELPORT_CACHE_DIR": "~/elsewhere"})
    assert s.cache_dir == Path.home() / "elsewhere"
    assert BackendSettings.from_settings(s).cache_dir == Path.home() / "elsewhere" / "safety"
    assert "`MODELPORT_CACHE_DIR`" not in dict.fromkeys(v for v, _, _ in config_table.OUTSIDE_SETTINGS)
