"""The training-set builder: labels, profanity detection and the benign-context augmentation."""

from __future__ import annotations

import random

import pytest

from tools.safety import trainset


def test_profanity_is_matched_as_whole_words_only() -> None:
    for text in ("This fucking laptop crashed.", "Shit, I missed the bus.", "What a dickhead.", "Pissed off again."):
        assert trainset._is_profane(text), text
    for text in ("We drove through Scunthorpe.", "A cocktail at the bar.", "Reading Dickens.",
                 "Please scrap the old plan.", "He's an assassin in the game.", "The cockpit was tiny."):
        assert not trainset._is_profane(text), text


def test_embedding_keeps_the_text_inside_benign_sentences() -> None:
    rng = random.Random(0)
    filler = ["The bus was late.", "We planted tulips.", "The soup needs salt."]
    for _ in range(20):
        out = trainset._embed("I will hurt you.", rng, filler)
        assert "I will hurt you." in out and out != "I will hurt you."
        rest = [s.strip() + "." for s in out.replace("I will hurt you.", "").split(".") if s.strip()]
        assert 1 <= len(rest) <= 4 and set(rest) <= set(filler)


def test_label_notation_and_sources_parse() -> None:
    assert trainset._labels("h3 v2") == {"hate": "high", "violence": "medium"}
    assert trainset._labels("-") == {}
    for line in trainset.HARMFUL_3:
        spec, text = line.split("|", 1)
        assert trainset._labels(spec) and text.strip(), line
    assert len(trainset.BENIGN_TRICKY_3) > 400 and len(trainset.HARMFUL_3) > 400
    for line in trainset.HARMFUL_4:
        spec, text = line.split("|", 1)
        assert trainset._labels(spec) and text.strip(), line
    assert len(trainset.HARMFUL_4) > 300 and len(trainset.MODEL_ANSWERS) > 200


def test_long_answers_are_cut_into_window_sized_runs_of_whole_sentences() -> None:
    answer = " ".join(f"Sentence number {i} is about watering the tomato beds in the evening." for i in range(12))
    pieces = trainset._chunks(answer)
    assert len(pieces) >= 3
    assert all(8 <= len(p.split()) <= 45 and p.endswith(".") for p in pieces)
    assert " ".join(pieces) == answer  # nothing lost, nothing repeated


@pytest.mark.training  # builds the classifier's whole training set
def test_the_committed_training_file_is_what_build_writes() -> None:
    """train.jsonl is generated: a source edited without rebuilding it (a text or only a label)
    would train on stale data."""
    import json

    rows = [json.loads(line) for line in (trainset.DATA_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == [trainset.stored(it) for it in trainset.build()]


@pytest.mark.training  # builds the classifier's whole training set
def test_build_is_deterministic_and_labels_are_valid() -> None:
    a, b = trainset.build(), trainset.build()
    assert a == b
    severities = {"low", "medium", "high"}
    for it in a:
        assert set(it["labels"]) <= {"hate", "sexual", "violence", "self_harm"}
        assert set(it["labels"].values()) <= severities


def test_developer_prompts_are_benign_varied_and_never_jailbreaks() -> None:
    """Issue 15: ids, hashes, URLs, code and format instructions are taught as benign, not jailbreak;
    the identifiers are random per item, and the fifth pass's jailbreaks also carry identifiers,
    so an identifier alone is no cue either way."""
    items = trainset.build_fifth(random.Random(3))
    dev = [it for it in items if it["group"] in trainset.DEV_PROMPTS]
    assert len(dev) == 8 * len(trainset.DEV_PROMPTS)
    assert all(not it["labels"] and not it["jailbreak"] for it in dev)
    canaries = [it["text"] for it in dev if "CANARY-" in it["text"]]
    assert len(canaries) >= 20 and len(set(canaries)) == len(canaries)
    assert any("CANARY-" in it["text"] for it in items if it["jailbreak"])
    assert all(it["pass"] == 5 for it in items)
    labelled = [it for it in items if it["labels"]]
    assert sum(len(it["labels"]) > 1 for it in labelled) >= 60  # two-category items, every copy counted
