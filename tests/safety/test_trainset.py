"""The training-set builder: labels, profanity detection and the benign-context augmentation."""

from __future__ import annotations

import random

from modelport.safety import trainset


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


def test_build_is_deterministic_and_labels_are_valid() -> None:
    a, b = trainset.build(), trainset.build()
    assert a == b
    severities = {"low", "medium", "high"}
    for it in a:
        assert set(it["labels"]) <= {"hate", "sexual", "violence", "self_harm"}
        assert set(it["labels"].values()) <= severities
