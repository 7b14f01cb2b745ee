"""The transformers runtime, in this process: the bundled MiniLM encoder, and a tiny causal LM
built here from a config (no causal safetensors LM is bundled; its weights are random, which
is enough to test the decode loop, seeds, limits and counting, not the quality of text)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.errors import InvalidInput, Unprocessable
from modelport.runtimes.base import GenerateRequest, ModelSpec
from modelport.runtimes.transformers import TransformersRuntime
from tests.support.models import MINILM_DIR

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def encoder() -> TransformersRuntime:
    return TransformersRuntime.load(ModelSpec(str(MINILM_DIR), threads=1))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersRuntime]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-lm")
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM_DIR), local_files_only=True)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(str(path))
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, eos_token_id=tokenizer.sep_token_id,
                         bos_token_id=tokenizer.cls_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(path))
    yield TransformersRuntime.load(ModelSpec(str(path), threads=1))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_minilm_embeddings_are_384_long_unit_vectors_that_capture_meaning(encoder: TransformersRuntime) -> None:
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly revenue grew by 4%."]
    result = encoder.embed(texts)
    assert [len(v) for v in result.vectors] == [384, 384, 384]
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-5) for v in result.vectors)
    assert cosine(result.vectors[0], result.vectors[1]) > cosine(result.vectors[0], result.vectors[2]) + 0.3
    assert result.prompt_tokens == sum(encoder.count_input_tokens(texts))
    assert encoder.supported_tasks == {"embeddings"}
    assert encoder.context_length == 256  # sentence_bert_config.json max_seq_length


def test_minilm_matches_sentence_transformers_reference_pooling(encoder: TransformersRuntime) -> None:
    """Mean pooling over real tokens only: padding a text in a batch must not change its vector."""
    alone = encoder.embed(["short"]).vectors[0]
    batched = encoder.embed(["short", "a much longer sentence that forces padding of the short one"]).vectors[0]
    assert cosine(alone, batched) > 0.99999


def test_embedding_input_over_the_limit_is_refused(encoder: TransformersRuntime) -> None:
    with pytest.raises(InvalidInput, match="at most 256"):
        encoder.embed(["word " * 400])
    with pytest.raises(InvalidInput, match="does not generate text"):
        list(encoder.generate(GenerateRequest(prompt="x"), threading.Event()))


def run(rt: TransformersRuntime, **kw) -> tuple[str, str, object]:
    deltas = list(rt.generate(GenerateRequest(**kw), threading.Event()))
    return "".join(d.text for d in deltas), deltas[-1].finish_reason, deltas[-1].usage


def test_causal_lm_is_deterministic_for_a_seed_and_honours_max_tokens(tiny_lm: TransformersRuntime) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    first = run(tiny_lm, messages=messages, max_tokens=12, temperature=1.0, seed=3)
    assert first == run(tiny_lm, messages=messages, max_tokens=12, temperature=1.0, seed=3)
    assert first[0] != run(tiny_lm, messages=messages, max_tokens=12, temperature=1.0, seed=4)[0]
    assert first[1] == "length"
    assert first[2].completion_tokens == 12
    assert first[2].prompt_tokens == tiny_lm.count_tokens(messages=messages)
    assert tiny_lm.supported_tasks == {"chat-completion", "completion"}


def test_causal_lm_stop_sequence_and_context_limit(tiny_lm: TransformersRuntime) -> None:
    text, _, _ = run(tiny_lm, prompt="the", max_tokens=8, temperature=0)
    word = text.split()[1]
    cut, finish, _ = run(tiny_lm, prompt="the", max_tokens=8, temperature=0, stop=(word,))
    assert finish == "stop"
    assert cut == text[: text.index(word)]
    with pytest.raises(InvalidInput, match="context window of 64"):
        run(tiny_lm, prompt="word " * 80)
    with pytest.raises(InvalidInput, match="json_object"):
        run(tiny_lm, prompt="x", response_format="json_object")


def test_a_directory_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Unprocessable, match=r"config\.json"):
        TransformersRuntime.load(ModelSpec(str(tmp_path)))
    with pytest.raises(Unprocessable, match="is a directory"):
        TransformersRuntime.load(ModelSpec(str(tmp_path / "missing")))


def test_special_token_text_in_a_message_is_tokenised_as_text(tiny_lm: TransformersRuntime) -> None:
    """The tokenizer's special tokens ([SEP], [CLS]) come only from the chat template's markup: a
    message holding their text is tokenised as the text '[', 'sep', ']' (as the lower-case '[sep]')."""
    hostile = tiny_lm.count_tokens(messages=[{"role": "user", "content": "[SEP] [CLS] hi"}])
    plain = tiny_lm.count_tokens(messages=[{"role": "user", "content": "[sep] [cls] hi"}])
    assert hostile == plain
    assert tiny_lm.count_tokens(prompt="[SEP]") == 3  # raw prompts: the caller writes the whole input
