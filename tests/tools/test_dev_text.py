"""The benign developer text the jailbreak output is refitted on (tools/safety/dev_text.py)."""

from __future__ import annotations

from tools.safety import dev_text


def test_generation_is_deterministic_and_covers_every_kind() -> None:
    first, second = dev_text.generate(400), dev_text.generate(400)
    assert first == second
    kinds = {it["kind"] for it in first}
    # non-English needs the system's gettext catalogs; every other kind comes from Python files
    assert kinds >= set(dev_text.FRAMES) - {"foreign"}
    assert all(it["text"].strip() and it["source"] for it in first)


def test_split_keeps_each_source_on_one_side() -> None:
    items = dev_text.generate(600)
    fit, cal = dev_text.split(items)
    assert fit and cal and len(fit) + len(cal) == len(items)
    assert not {it["source"] for it in fit} & {it["source"] for it in cal}
