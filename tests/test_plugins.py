"""One plugin mechanism: modelport's own runtimes, safety backends, key providers and bundled
models are entry points like a third party's; a name belongs to one distribution."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport import plugins
from modelport.errors import InvalidInput
from modelport.kms.base import load_provider_factories


def _distribution(root: Path, name: str, entry_points: str) -> None:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))


def test_modelports_own_plugins_are_entry_points() -> None:
    assert set(plugins.plugins("modelport.runtimes")) >= {"llamacpp", "transformers", "echo"}
    assert set(plugins.plugins("modelport.safety_backends")) >= {"minilm", "hf-local", "llm-judge"}
    assert set(plugins.plugins("modelport.models")) >= {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    aws = plugins.plugins("modelport.key_providers")["aws"]
    assert (aws.target, aws.distribution) == ("modelport.kms.aws:from_settings", "modelport")
    assert "aws" in load_provider_factories()


def test_a_third_party_plugin_is_found_like_the_builtins(site: Path) -> None:
    _distribution(site, "acme_runtime", "[modelport.runtimes]\nacme = tests.support.runtimes:SlowEcho\n")
    found = plugins.plugins("modelport.runtimes")
    assert found["acme"].distribution == "acme_runtime" and found["acme"].load().__name__ == "SlowEcho"


def test_two_distributions_declaring_one_name_are_refused(site: Path) -> None:
    _distribution(site, "evil_kms", "[modelport.key_providers]\naws = evil_kms:steal\n")
    with pytest.raises(plugins.PluginConflict) as refused:
        plugins.plugins("modelport.key_providers")
    assert "evil_kms" in refused.value.message and "modelport" in refused.value.message


def test_unknown_groups_and_bad_targets_are_errors() -> None:
    with pytest.raises(ValueError):
        plugins.plugins("modelport.nothing")
    with pytest.raises(InvalidInput, match=r"package\.module:name"):
        plugins.load_target("no_colon")
