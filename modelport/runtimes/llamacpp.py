"""`llamacpp`: GGUF chat models through llama-cpp-python, with continuous batching.

Concurrent requests decode together: `llamacpp_engine.BatchEngine` runs one batch loop over
llama.cpp's low-level API (one sequence id per request, one `llama_decode` per step, sequences
joining and leaving between steps, prompts prefilled in chunks), and `generate` hands a request to
it and reads its tokens back. The loop is ours, rather than llama-cpp-python's `Llama.generate`
or llama.cpp's `llama-server`, for these reasons:
- tenant isolation: no KV cache or prompt cache is reused between requests (`Llama.generate`
  reuses any matching prefix of the previous call; `llama-server` keeps a prompt cache per slot
  and across slots); each sequence's KV cells are removed when it leaves, and counters show it;
- cancellation: the cancel event is checked before every step, so a client that goes away stops
  its sequence within one step, and the others continue;
- exact accounting: usage counts the tokens we fed and sampled, and finish_reason is ours;
- the worker's sandbox is unchanged (one process, weights and adapter from inherited file
  descriptors), where `llama-server` would add a second program to build, supervise and feed.
Measured: benchmarks/bench_generation.py (BENCHMARKS.md).

Options (deployment `options`): `parallel` (sequences decoded together, default 4),
`prefill_chunk` (prompt tokens per step while other sequences decode, default 128),
`prefill_first_ms` (how long prompts waiting for their first token may hold running streams back,
default 250; 0: never, every step decodes the running streams too), `n_batch`
(most tokens one step decodes, default 512), `flash_attn` (default on: llama.cpp's CPU flash attention
made a step of 8 sequences 43 ms instead of 54 here, bench_generation.py), `kv_unified` (default
off), `kv_cells` (with `kv_unified` only). By default every sequence has a KV stream of its own,
`context_length` cells, allocated at load: the worker's KV memory is `parallel` times that of a
one-sequence context, and a sequence's logits do not depend on what else is in the batch, so
batched outputs equal outputs alone, sampled ones included (tests/runtimes/
test_llamacpp_batching.py). With `kv_unified` the sequences share `kv_cells` cells (default
twice the context length): less memory, but a sequence's cells sit among the others', its
logits differ from a run alone in the last bits, and a greedy tie can break the other way; a
full cache preempts the youngest sequence (llamacpp_engine.py). Nothing is cached on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from modelport.errors import InvalidInput, Unprocessable
from modelport.runtimes.base import (
    TASK_CHAT,
    TASK_COMPLETION,
    Delta,
    GenerateRequest,
    ModelSpec,
    Runtime,
    StopMatcher,
    check_prompt_fits,
)
from modelport.runtimes.llamacpp_engine import BatchEngine, choices_sink, silence_llama_log
from modelport.runtimes.llamacpp_engine import Sequence as EngineSequence
from modelport.runtimes.prompting import chat_prompt_ids

GGUF_MAGIC = b"GGUF"
DEFAULT_N_CTX = 4096
DEFAULT_PARALLEL = 4
DEFAULT_PREFILL_FIRST_MS = 250


def check_gguf(path: str) -> None:
    """Fail early, in words a person can act on, before llama.cpp says 'failed to load'."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise Unprocessable(f"model file cannot be opened ({exc.strerror})", field="model") from exc
    if magic != GGUF_MAGIC:
        raise Unprocessable("model file is not a valid GGUF (bad magic bytes)", field="model")


def control_texts(llm: Any) -> list[str]:
    """Texts of the vocabulary's control tokens: those llama.cpp parses only when asked to."""
    import llama_cpp

    vocab = llm._model.vocab
    mask = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    return [llm._model.token_get_text(i) for i in range(llama_cpp.llama_vocab_n_tokens(vocab))
            if llama_cpp.llama_vocab_get_attr(vocab, i) & mask]


class LlamaCppRuntime(Runtime):
    name = "llamacpp"
    tasks = frozenset({TASK_CHAT, TASK_COMPLETION})

    def __init__(self, llm: Any, spec: ModelSpec) -> None:
        super().__init__()
        import llama_cpp
        from llama_cpp.llama_grammar import JSON_GBNF

        self._L = llama_cpp
        self._llm = llm
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._vocab = llm._model.vocab
        self._json_gbnf = JSON_GBNF.encode()
        options = spec.options
        model = llm._model
        self._context_length = min(spec.n_ctx or DEFAULT_N_CTX, model.n_ctx_train())
        self._add_bos = bool(model.add_bos_token())
        self._bos = llm.token_bos()
        self._bos_text = model.token_get_text(self._bos) if self._bos >= 0 else ""
        eos = llm.token_eos()
        self._eos_text = model.token_get_text(eos) if eos >= 0 else ""
        self._template = llm.metadata.get("tokenizer.chat_template")
        self._controls = control_texts(llm)
        self._token_to_piece = llama_cpp.llama_token_to_piece
        self._pieces: dict[int, bytes] = {}
        parallel = _int_option(options, "parallel", DEFAULT_PARALLEL, 1, 256)
        unified = bool(options.get("kv_unified", False))
        kv_cells = (_int_option(options, "kv_cells", 2 * self._context_length, self._context_length, 1 << 20)
                    if unified else parallel * self._context_length)
        n_batch = _int_option(options, "n_batch", 512, 16, 8192)
        if parallel > n_batch:
            raise InvalidInput(f"option parallel ({parallel}) must not exceed n_batch ({n_batch}): one step decodes "
                               "a token of every sequence", field="options.parallel")
        silence_llama_log()  # from here on a request's grammar could reach llama.cpp's log
        self._engine = BatchEngine(
            model.model, self._vocab, lora_adapter=llm._lora_adapter, parallel=parallel, kv_cells=kv_cells,
            n_batch=n_batch, prefill_chunk=_int_option(options, "prefill_chunk", 128, 1, 8192),
            threads=spec.thread_count, flash_attn=bool(options.get("flash_attn", True)), unified=unified,
            prefill_first_ms=_int_option(options, "prefill_first_ms", DEFAULT_PREFILL_FIRST_MS, 0, 60_000),
            piece=self._piece)

    @classmethod
    def load(cls, spec: ModelSpec) -> LlamaCppRuntime:
        check_gguf(spec.model_path)
        if spec.lora_path is not None:
            check_gguf(spec.lora_path)
        from llama_cpp import Llama

        threads = spec.thread_count
        try:
            # The weights, vocabulary and adapter; its own small context is never used to decode
            # (the batching engine makes its own).
            llm = Llama(
                spec.model_path, n_ctx=256, n_batch=32, n_ubatch=32,
                n_threads=threads, n_threads_batch=threads,
                lora_path=spec.lora_path,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            # llama.cpp says only "failed to load model"; the header was fine, so it is the
            # architecture, a tensor type or a truncated file.
            raise Unprocessable("model file is a GGUF that llama.cpp cannot load (unsupported "
                                "architecture, tensor type, or a truncated file)", field="model") from exc
        try:
            return cls(llm, spec)
        except BaseException:
            llm.close()
            raise

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def max_concurrent_generations(self) -> int:
        return self._engine.parallel

    @property
    def tokens_generated_total(self) -> int:
        return self._engine.tokens_generated_total

    @tokens_generated_total.setter
    def tokens_generated_total(self, value: int) -> None:
        pass  # counted by the engine

    def counters(self) -> dict[str, int]:
        engine = self._engine
        return {
            "parallel": engine.parallel, "kv_cells": engine.kv_cells,
            "sequences_active": engine.active_sequences(), "kv_cells_used": engine.kv_cells_used(),
            "sequences_started": engine.sequences_started, "batch_steps": engine.steps,
            "max_batch_sequences": engine.max_batch_sequences, "preemptions": engine.preemptions,
            "sequence_moves": engine.sequence_moves, "prefill_first_steps": engine.prefill_first_steps,
            "prompt_tokens_decoded": engine.prompt_tokens_decoded,
            "cached_prompt_tokens": engine.cached_prompt_tokens,
            "shared_prompt_tokens": engine.shared_prompt_tokens,
            "kv_leftover_on_join": engine.kv_leftover_on_join,
            "decode_us": engine.decode_us, "step_us": engine.step_us,
        }

    # -- prompt ----------------------------------------------------------------------------

    def _tokenize(self, text: str, special: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def _prompt_tokens(self, messages: Sequence[dict[str, Any]] | None, prompt: str | None,
                       tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        if messages is not None:
            if not self._template:
                raise InvalidInput("this model has no chat template; use the completions API", field="messages")
            # Only the template's markup becomes control tokens (<|im_start|>...); the messages'
            # text never does, whatever it contains (runtimes/prompting.py).
            tokens = chat_prompt_ids(self._template, messages, bos_token=self._bos_text, eos_token=self._eos_text,
                                     tokenize=self._tokenize, control_texts=self._controls, tools=tools)
        else:
            tokens = self._tokenize(prompt or "", True)  # a raw prompt is the caller's whole input
        if self._add_bos and self._bos >= 0:
            tokens = [self._bos, *tokens]
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self._bos:
            tokens = tokens[1:]  # template wrote BOS and the tokenizer added one
        if not tokens:
            if self._bos < 0:
                raise InvalidInput("the prompt is empty", field="prompt")
            tokens = [self._bos]
        return tokens

    def count_tokens(self, *, messages: Sequence[dict[str, Any]] | None = None,
                     prompt: str | None = None, tools: Sequence[dict[str, Any]] | None = None) -> int:
        return len(self._prompt_tokens(messages, prompt, tools))

    # -- generation ------------------------------------------------------------------------

    def generate(self, request: GenerateRequest, cancel: threading.Event) -> Iterator[Delta]:
        """Hand the request to the batching engine and yield its Deltas as they are sampled.
        Leaving the iteration early (or setting `cancel`) takes the sequence out of the batch."""
        for _, delta in self.generate_choices(request, 1, cancel):
            yield delta

    def generate_choices(self, request: GenerateRequest, n: int,
                         cancel: threading.Event) -> Iterator[tuple[int, Delta]]:
        """The `n` choices of one request decode together: choice i with seed + i, every choice
        from one decoding of the prompt (the first choice's KV cells, copied to the others inside
        the engine; never to or from another request). Yields (choice index, Delta) interleaved."""
        tokens = self._prompt_tokens(request.messages, request.prompt, request.tools)
        room = check_prompt_fits(len(tokens), self._context_length)
        max_tokens = min(request.max_tokens, room) if request.max_tokens else room
        greedy = request.temperature <= 0 and request.grammar is None and request.response_format != "json_object"
        samplers: list[Any] = []
        try:
            for index in range(n):
                choice = request if index == 0 or request.seed is None else dataclasses.replace(
                    request, seed=request.seed + index)
                samplers.append(self._sampler(choice))
        except BaseException:
            for sampler in samplers:
                self._L.llama_sampler_free(sampler)
            raise
        mine = threading.Event()  # this reader's own cancel: set when the iteration is left early
        watch = _Either(cancel, mine)
        sinks, read = choices_sink(n)
        sequences = [EngineSequence(prompt=tokens, max_tokens=max_tokens, sampler=sampler,
                                    stopper=StopMatcher(request.stop), cancel=watch, sink=sink,
                                    logprobs=request.logprobs, greedy=greedy)
                     for sampler, sink in zip(samplers, sinks, strict=True)]
        try:
            self._engine.submit(sequences[0], sequences[1:])
        except BaseException:
            for sampler in samplers:
                self._L.llama_sampler_free(sampler)
            raise
        try:
            yield from read(lambda: self._engine.alive)
        finally:
            mine.set()

    def _sampler(self, request: GenerateRequest) -> Any:
        """The sequence's own sampler chain: grammar, then the OpenAI parameters (temperature 0
        is greedy; no top-k, min-p or repeat penalty), then its own seeded `dist`."""
        L = self._L
        grammar = request.grammar.encode() if request.grammar is not None else (
            self._json_gbnf if request.response_format == "json_object" else None)
        compiled = None
        if grammar is not None:
            with _stderr_silenced():  # llama.cpp prints a grammar that fails to parse, whole, to fd 2
                compiled = L.llama_sampler_init_grammar(self._vocab, grammar, b"root")
            if not compiled:
                raise InvalidInput("the grammar could not be parsed as GBNF with a `root` rule; check its syntax",
                                   field="grammar")
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if compiled is not None:
            L.llama_sampler_chain_add(chain, compiled)
        if request.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            seed = request.seed if request.seed is not None else secrets.randbits(32)
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(request.top_p, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(request.temperature))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _piece(self, token: int) -> bytes:
        """Bytes of one token, memoised (the vocabulary is fixed for the life of the model).

        Not `LlamaModel.token_to_piece`: in 0.3.36 it returns its whole 32-byte buffer, NULs
        included, and `detokenize` asserts on pieces longer than 32 bytes."""
        piece = self._pieces.get(token)
        if piece is None:
            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = self._token_to_piece(self._vocab, token, buf, size, 0, False)
                if n >= 0:
                    piece = buf.raw[:n]
                    break
                size = -n
            self._pieces[token] = piece
        return piece

    def close(self) -> None:
        self._engine.close()
        self._llm.close()


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 points at /dev/null for the duration (all threads of the process: kept
    to the microseconds a grammar takes to compile; the lock keeps two compiles from racing)."""
    with _STDERR_LOCK:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


class _Either:
    """`is_set()` of two events: the worker's cancel or the reader's own."""

    __slots__ = ("_a", "_b")

    def __init__(self, a: threading.Event, b: threading.Event) -> None:
        self._a, self._b = a, b

    def is_set(self) -> bool:
        return self._a.is_set() or self._b.is_set()


def _int_option(options: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"option {name} must be an integer from {low} to {high}", field=f"options.{name}")
    return value
