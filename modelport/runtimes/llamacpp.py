"""`llamacpp`: GGUF chat models through llama-cpp-python.

The decode loop is ours, built on `Llama.eval`/`Llama.generate`, rather than
`create_completion`, for three reasons:
- tenant isolation: `Llama.generate` reuses the KV cache of any matching token prefix from
  the previous call, so one tenant's prompt state would shorten (and time-leak into) the next
  tenant's request. We `reset()` before every request and prefill ourselves;
- cancellation: the prompt is prefilled in chunks and the cancel event is checked between
  chunks and after every token, so a client that goes away stops decoding within a token;
- exact accounting: usage counts the tokens we fed and sampled, and finish_reason is ours.

Options: `prefill_chunk` (tokens per prefill step, default 128; smaller reacts to a cancel
sooner at some prefill speed), `n_batch` (default 512). Nothing is cached on disk.
"""

from __future__ import annotations

import codecs
import ctypes
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
    TokenLogprob,
    Usage,
    check_prompt_fits,
)
from modelport.runtimes.prompting import chat_prompt_ids

GGUF_MAGIC = b"GGUF"
DEFAULT_N_CTX = 4096


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
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        self._llm = llm
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._vocab = llm._model.vocab
        self._json_grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        self._prefill_chunk = max(1, int(spec.options.get("prefill_chunk", 128)))
        model = llm._model
        self._context_length = min(llm.n_ctx(), model.n_ctx_train())
        self._add_bos = bool(model.add_bos_token())
        self._bos = llm.token_bos()
        self._bos_text = model.token_get_text(self._bos) if self._bos >= 0 else ""
        eos = llm.token_eos()
        self._eos_text = model.token_get_text(eos) if eos >= 0 else ""
        self._template = llm.metadata.get("tokenizer.chat_template")
        self._controls = control_texts(llm)
        self._token_to_piece = llama_cpp.llama_token_to_piece
        self._pieces: dict[int, bytes] = {}

    @classmethod
    def load(cls, spec: ModelSpec) -> LlamaCppRuntime:
        check_gguf(spec.model_path)
        if spec.lora_path is not None:
            check_gguf(spec.lora_path)
        from llama_cpp import Llama

        threads = spec.thread_count
        try:
            llm = Llama(
                spec.model_path,
                n_ctx=spec.n_ctx or DEFAULT_N_CTX,
                n_batch=int(spec.options.get("n_batch", 512)),
                n_threads=threads,
                n_threads_batch=threads,
                lora_path=spec.lora_path,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            # llama.cpp says only "failed to load model"; the header was fine, so it is the
            # architecture, a tensor type or a truncated file.
            raise Unprocessable("model file is a GGUF that llama.cpp cannot load (unsupported "
                                "architecture, tensor type, or a truncated file)", field="model") from exc
        return cls(llm, spec)

    @property
    def context_length(self) -> int:
        return self._context_length

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
        llm = self._llm
        tokens = self._prompt_tokens(request.messages, request.prompt, request.tools)
        grammar = self._grammar_for(request)
        room = check_prompt_fits(len(tokens), self._context_length)
        max_tokens = min(request.max_tokens, room) if request.max_tokens else room
        seed = request.seed if request.seed is not None else secrets.randbits(32)

        # Forget the previous request entirely (KV cache cells and token history), then
        # prefill all but the last prompt token in chunks, checking for a cancel in between.
        llm.reset()
        body = tokens[:-1]
        for start in range(0, len(body), self._prefill_chunk):
            if cancel.is_set():
                return
            llm.eval(body[start:start + self._prefill_chunk])
        if cancel.is_set():
            return

        llm.set_seed(seed & 0xFFFFFFFF)
        # Sampler matching the OpenAI parameters: no top-k/min-p/repeat penalty of
        # llama.cpp's defaults, temperature 0 means greedy.
        stream = llm.generate(
            tokens[-1:], reset=False, temp=max(0.0, request.temperature), top_p=request.top_p,
            top_k=0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0,
            grammar=grammar,
        )
        logprobs = request.logprobs
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        scored: list[TokenLogprob] = []  # tokens whose text the stop matcher still holds
        stopper = StopMatcher(request.stop)
        to_piece = self._piece
        produced = 0
        finish = "length"
        hit = False
        try:
            for token in stream:
                if cancel.is_set():
                    return
                if self._is_eog(self._vocab, token):
                    finish = "stop"
                    break
                produced += 1
                self.tokens_generated_total += 1
                out, hit = stopper.feed(decoder.decode(to_piece(token)))
                if logprobs is not None:
                    scored.append(self._logprob(token, logprobs))
                    if out:  # tokens of a stop sequence (never sent) are dropped with it
                        yield Delta(out, logprobs=tuple(scored))
                        scored = []
                elif out:
                    yield Delta(out)
                if hit:
                    finish = "stop"
                    break
                if produced >= max_tokens:
                    break
        finally:
            stream.close()
        tail = "" if hit else stopper.flush() + decoder.decode(b"", final=True)
        yield Delta(tail, finish_reason=finish, usage=Usage(len(tokens), produced),  # type: ignore[arg-type]
                    logprobs=tuple(scored) if logprobs is not None and not hit else None)

    # -- grammar and logprobs (structured outputs, tool calls) --------------------------------

    def _grammar_for(self, request: GenerateRequest) -> Any:
        if request.grammar is None:
            return self._json_grammar if request.response_format == "json_object" else None
        # llama.cpp answers a grammar it cannot parse with a null sampler, which the sampler chain
        # would dereference: try it alone first (the gateway builds grammars; failing here is a bug).
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        probe = llama_cpp.llama_sampler_init_grammar(self._vocab, request.grammar.encode("utf-8"), b"root")
        if not probe:
            raise InvalidInput("the grammar does not parse", field="grammar")
        llama_cpp.llama_sampler_free(probe)
        return LlamaGrammar.from_string(request.grammar, verbose=False)

    def _logprob(self, token: int, top: int) -> TokenLogprob:
        """The sampled token's log probability and the `top` most likely ones, from the logits the
        model produced for this step (still in the context: the next step is decoded after this)."""
        import llama_cpp
        import numpy as np

        n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._llm._ctx.ctx, -1), shape=(n_vocab,))
        shifted = logits - logits.max()
        logz = float(np.log(np.exp(shifted).sum()))
        best: tuple[tuple[bytes, float], ...] = ()
        if top:
            ids = np.argpartition(-shifted, top)[:top]
            ids = ids[np.argsort(-shifted[ids])]
            best = tuple((self._piece(int(i)), float(shifted[i]) - logz) for i in ids)
        return TokenLogprob(self._piece(token), float(shifted[token]) - logz, best)

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
        self._llm.close()
