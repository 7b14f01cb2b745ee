"""The frozen evaluation set: checked by sha256, big and varied enough, never in the training data."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tools.safety import evaluate, trainset
from tools.safety.evaluate import EvalSetChanged, load_eval_set, wilson

DATA = Path(evaluate.__file__).parent / "data"


def test_frozen_eval_set_loads_and_has_the_promised_shape() -> None:
    items = load_eval_set()
    assert len(items) >= 300
    benign = [i for i in items if evaluate.is_benign(i)]
    tricky = [i for i in benign if i.get("tricky")]
    assert len(tricky) * 3 >= len(benign)
    assert sum(1 for i in items if len(i["labels"]) > 1) >= 5
    for cat in ("hate", "sexual", "violence", "self_harm"):
        assert sum(1 for i in items if i["labels"].get(cat) in ("medium", "high")) >= 30
    assert sum(i["jailbreak"] for i in items) >= 20
    assert sum(i["profanity"] for i in items) >= 20


def test_a_changed_eval_set_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "eval.jsonl"
    shutil.copy(DATA / "eval.jsonl", copy)
    with copy.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "an extra easy item", "labels": {}, "jailbreak": False, "profanity": False}) + "\n")
    with pytest.raises(EvalSetChanged):
        load_eval_set(copy, DATA / "EVAL_SHA256")


def test_no_eval_text_or_near_copy_is_in_the_training_set() -> None:
    def words(t: str) -> set[str]:
        return set(re.findall(r"\w+", t.lower()))

    evals = [words(i["text"]) for i in load_eval_set()]
    lines = (DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 2500
    for line in lines:
        w = words(json.loads(line)["text"])
        assert all(len(w & e) < 0.6 * len(w | e) for e in evals), "a training text nearly copies an eval text"


def test_wilson_interval_matches_known_values() -> None:
    lo, hi = wilson(17, 20)
    assert (round(lo, 3), round(hi, 3)) == (0.640, 0.948)
    assert wilson(0, 0) == (0.0, 1.0)


def test_held_out_answers_are_streamed_through_the_output_filter(minilm) -> None:
    """evaluate.py's second measure: benign answers streamed through the served output filter.
    A harmless answer passes; the same answer with a threat in its middle is cut, as violence."""
    from asyncio import run

    answer = ("Tomatoes like full sun and rich soil. Water them deeply twice a week rather than a "
              "little every day, so the roots grow down. Pinch out the side shoots of cordon "
              "varieties and tie the main stem to a cane as it grows. Feed with a potash-rich "
              "fertiliser once the first fruits have set.")
    threat = "I know where you live, and tonight I will come and cut your throat while you sleep."
    rows = run(evaluate.screen_answers(minilm, [answer, answer + " " + threat + " " + answer]))
    assert [r.cut for r in rows] == [False, True]
    assert rows[0].severities["violence"] == "safe" and rows[1].severities["violence"] in ("medium", "high")
    report = evaluate.answers_report(rows)
    assert "cut:" in report and "1/2" in report.splitlines()[1]
    held_out = evaluate.load_answers()
    assert len(held_out) == 80 and not set(held_out) & set(trainset.MODEL_ANSWERS)


def test_figures_print_counts_and_survive_an_empty_denominator() -> None:
    assert evaluate._fmt(35, 36).split() == ["0.97", "[0.86-1.00]", "35/36"]
    assert "n/a" in evaluate._fmt(0, 0)


def _independent_dir(tmp_path: Path, files: dict[str, list[dict]]) -> Path:
    import hashlib

    sums = []
    for name, items in files.items():
        data = "".join(json.dumps(i) + "\n" for i in items).encode()
        (tmp_path / name).write_bytes(data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
    (tmp_path / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return tmp_path


def test_the_independent_set_is_checked_by_sha256_and_read_in_eval_shape(tmp_path: Path) -> None:
    """On a stand-in directory (the real set's texts stay unread): items without jailbreak or
    profanity fields read as False; a changed file or an unreadable item is refused."""
    files = {"harmful.jsonl": [{"text": "t1", "labels": {"hate": "high", "violence": "medium"}}],
             "benign.jsonl": [{"text": "t2", "labels": {}}],
             "robustness.jsonl": [{"text": "t3", "labels": {}, "jailbreak": False}]}
    directory = _independent_dir(tmp_path, files)
    sets = evaluate.load_independent(directory)
    assert sets["harmful.jsonl"][0] == {"text": "t1", "labels": {"hate": "high", "violence": "medium"},
                                        "jailbreak": False, "profanity": False}
    with (directory / "benign.jsonl").open("a") as f:
        f.write(json.dumps({"text": "extra", "labels": {}}) + "\n")
    with pytest.raises(EvalSetChanged):
        evaluate.load_independent(directory)
    bad = _independent_dir(tmp_path, {**files, "benign.jsonl": [{"text": "secret words", "labels": {"gore": "high"}}]})
    with pytest.raises(ValueError, match="cannot read") as info:
        evaluate.load_independent(bad)
    assert "gore" not in str(info.value) and "secret" not in str(info.value)
    safe = _independent_dir(tmp_path, {**files, "benign.jsonl": [{"text": "t", "labels": {"hate": "safe"}}]})
    assert evaluate.load_independent(safe)["benign.jsonl"][0]["labels"] == {}


def test_the_real_independent_set_is_the_frozen_one() -> None:
    """Only that it loads (its sha256 sums hold, every item is readable): nothing of its content is
    asserted, and a failure is reported without a traceback (which could show a text)."""
    try:
        sets = evaluate.load_independent()
    except Exception as exc:  # any failure: reported by its type only
        pytest.fail(f"the independent set did not load: {type(exc).__name__}", pytrace=False)
    if set(sets) != set(evaluate.INDEPENDENT_FILES):
        pytest.fail("the independent set's files differ", pytrace=False)


def test_independent_report_counts_multi_label_items_in_every_category_and_checks_the_targets() -> None:
    from modelport.safety.backends.base import Analysis

    def an(**sev: str) -> Analysis:
        return Analysis(severities={c: sev.get(c, "safe") for c in ("hate", "sexual", "violence", "self_harm")})

    harmful = [{"text": "a", "labels": {"hate": "high", "violence": "high"}, "jailbreak": False, "profanity": False},
               {"text": "b", "labels": {"sexual": "medium"}, "jailbreak": False, "profanity": False}]
    benign = [{"text": "c", "labels": {}, "jailbreak": False, "profanity": False}] * 2
    robust = [{"text": "d", "labels": {}, "jailbreak": False, "profanity": False}] * 4
    sets = {"harmful.jsonl": harmful, "benign.jsonl": benign, "robustness.jsonl": robust}
    found = {"harmful.jsonl": [an(hate="high"), an(sexual="medium")],  # violence missed on the two-category item
             "benign.jsonl": [an(), an(self_harm="medium")],
             "robustness.jsonl": [an(), an(), an(), Analysis(severities=an().severities, jailbreak=True)]}
    text = evaluate.independent_report(sets, found)
    targets = text.split("targets (issue 15):")[1]
    assert "hate       recall  1.00" in targets and "violence   recall  0.00" in targets
    assert "benign FP  0.50" in targets.split("self_harm")[1] and "benign FP  0.00" in targets.split("self_harm")[0]
    assert "jailbreak FP on the robustness set  0.25" in targets and "MISSED" in targets
    confusion = text.split("confusion across categories")[1].split("targets")[0]
    hate_row = next(line for line in confusion.splitlines() if line.startswith("hate"))
    assert hate_row.split()[1:] == ["1", "1.00", "0.00", "0.00", "0.00", "0.00"]
    violence_row = next(line for line in confusion.splitlines() if line.startswith("violence"))
    assert violence_row.split()[1:] == ["1", "1.00", "0.00", "0.00", "0.00", "0.00"]
