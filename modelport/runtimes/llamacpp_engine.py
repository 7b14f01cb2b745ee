"""Continuous batching for the llamacpp runtime: many sequences decoded together in one context.

One engine thread owns one llama.cpp context with `n_seq_max = parallel` sequence ids, each with
a KV stream of its own (or, with `unified`, one KV cache of `kv_cells` cells that all share).
Each step it builds one `llama_batch` from
- one token for every sequence that is decoding (its last sampled token), and
- the next chunk of prompt tokens of sequences that are still prefilling, at most
  `prefill_chunk` tokens a step while others decode (the whole batch when nobody decodes), so a
  long prompt that arrives never stalls the running streams for more than one chunk, and at most
  one prompt finishing a step (prompts that arrive together reach their first tokens in turn);
  with `prefill_first_ms`, steps hold the running streams back while prompts wait for their
  first tokens, for at most that long since the streams' last token,
calls `llama_decode` once, then samples one token for every sequence whose last fed token
produced logits. Sequences join between steps (when a sequence id is free and the KV cache has
room for their prompt) and leave between steps (finished, stopped, cancelled).

Per sequence, all of its own: sampling parameters, seed (its own `dist` sampler), grammar
(`json_object` or the caller's GBNF, one grammar sampler per sequence), stop strings, top-k
logprobs, max_tokens, cancel event. With a KV stream per sequence a sequence's logits do not
depend on its batch neighbours, and outputs batched equal outputs alone, sampled ones included
(tests/runtimes/test_llamacpp_batching.py). In a unified cache they differ in the last bits
(llama.cpp promises no bit-identical logits across batch shapes), and a greedy tie can break
the other way.

Choices of one request (`n` above 1) decode together, and share their prompt: `submit` takes the
first choice with its siblings; the first decodes the prompt, and in the step where its prompt's
last token gives logits, each sibling takes a free sequence id, gets a copy of the first one's KV
cells (`llama_state_seq_get_data`/`set_data` with a KV stream per sequence; shared cells,
`llama_memory_seq_cp`, in a unified cache) and samples its first token, with its own sampler, from the same
logits. A sibling takes only a sequence id that no waiting sequence would get (so a request's
choices never jump the queue); one that cannot fork waits at the back of the queue and decodes
its own copy of the prompt, as any request does. Counted in `shared_prompt_tokens`.

Isolation (no KV or prompt-cache reuse across requests, so none across workspaces): a
sequence's KV cells are removed when it leaves, and a joining sequence must find its sequence id
empty; the engine checks that (fail closed: a sequence id that still holds cells is cleared and
counted in `kv_leftover_on_join`, which must stay 0) and counts `cached_prompt_tokens` (prompt
tokens not decoded because another request had them in the cache), which is 0 by construction
and exposed so that tests and operators can see it. KV cells are copied only from a request's
first choice to its own siblings, which are handed to `submit` together; nothing else ever
copies cells between sequence ids. Every request decodes its whole prompt once
(`prompt_tokens_decoded`).
The context has one LoRA adapter at most, set once at load; a worker serves one model of one
workspace when that model is private, so a batch never holds two workspaces' adapters.

In a unified cache, cells are taken as tokens arrive. When a step needs more cells than are
free, the most recently joined sequence is preempted: its cells are freed
and it goes back to the front of the queue holding its prompt and the tokens generated so far,
which are decoded again when room returns (its sampler state, stop matcher and emitted text are
kept, so the stream continues where it was). The oldest sequence always fits alone
(`kv_cells >= context_length`).

Privacy (P1): nothing here logs or raises with prompt, grammar or output text; llama.cpp's own
log (which prints a grammar that fails to parse) is silenced once the model is loaded.
"""

from __future__ import annotations

import codecs
import ctypes
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelport.errors import InternalError, InvalidInput, ModelportError
from modelport.runtimes.base import Delta, StopMatcher, TokenLogprob, Usage

#: what a sequence's sink receives: a Delta, an error, or None (a choice that never started:
#: it ended with its request's first choice). A sequence that was cancelled (or stopped by
#: `close`) ends with a Delta holding only its usage: the tokens it generated (`_stopped`).
Event = Delta | ModelportError | None

_quiet_log: Any = None


def silence_llama_log() -> None:
    """Drop every llama.cpp log line from now on (a grammar that fails to parse is printed whole
    by llama.cpp, and a grammar is request content)."""
    global _quiet_log
    import llama_cpp

    if _quiet_log is None:
        _quiet_log = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p(0))


@dataclass(eq=False)
class Sequence:
    """One generation inside the engine."""

    prompt: list[int]
    max_tokens: int
    sampler: Any  # llama_sampler chain, owned by the sequence
    stopper: StopMatcher
    cancel: Any  # anything with is_set(): the request's cancel event
    sink: Callable[[Event], None]
    logprobs: int | None = None
    greedy: bool = False  # temperature 0 without grammar: the sampler chain is a plain greedy one
    slot: int = -1
    feed: list[int] = field(default_factory=list)  # tokens to decode before the next sample
    n_past: int = 0  # tokens of this sequence in the KV cache
    generated: list[int] = field(default_factory=list)
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    joined_at: int = 0
    done: bool = False
    #: the other choices of this sequence's request, until they fork from its prompt (see `_fork`)
    siblings: list[Sequence] = field(default_factory=list)


class BatchEngine:
    """The batch loop; see the module docstring. `submit` is called from any thread."""

    def __init__(self, model: Any, vocab: Any, *, lora_adapter: Any, parallel: int, kv_cells: int,
                 n_batch: int, prefill_chunk: int, threads: int, flash_attn: bool, unified: bool = True,
                 prefill_first_ms: int = 0, piece: Callable[[int], bytes]) -> None:
        import llama_cpp as L
        import numpy as np

        self._L = L
        self._np = np
        self._vocab = vocab
        self._n_vocab = L.llama_vocab_n_tokens(vocab)
        self._piece = piece
        self.parallel = parallel
        self.kv_cells = kv_cells
        self._n_batch = n_batch
        self._prefill_chunk = max(1, min(prefill_chunk, n_batch))
        self._prefill_first_ns = max(0, prefill_first_ms) * 1_000_000
        self._decoded_at = 0  # when the decoding sequences last got a token (monotonic ns)
        params = L.llama_context_default_params()
        params.n_ctx = kv_cells
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = parallel
        params.kv_unified = unified
        self._unified = unified
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.no_perf = False
        ctx = L.llama_init_from_model(model, params)
        if not ctx:
            raise InternalError("llama.cpp could not create a batching context (too little memory for "
                                f"{kv_cells} KV cells?)")
        self._ctx = ctx
        if lora_adapter is not None:
            adapters = (L.llama_adapter_lora_p_ctypes * 1)(lora_adapter)
            scales = (ctypes.c_float * 1)(1.0)
            if L.llama_set_adapters_lora(ctx, adapters, 1, scales):
                L.llama_free(ctx)
                raise InternalError("llama.cpp could not apply the LoRA adapter to the batching context")
        self._mem = L.llama_get_memory(ctx)
        # candidates for sampler chains, laid out as llama_token_data (id, logit, p), reused
        self._cand = np.zeros(self._n_vocab, dtype=np.dtype([("id", np.int32), ("logit", np.float32),
                                                              ("p", np.float32)]))
        self._cand_ids = np.arange(self._n_vocab, dtype=np.int32)
        self._cand_data = ctypes.cast(self._cand.ctypes.data, L.llama_token_data_p)
        self._cand_array = L.llama_token_data_array()
        self._batch = L.llama_batch_init(n_batch, 0, 1)
        self._free_slots = list(range(parallel - 1, -1, -1))
        self._waiting: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._wake = threading.Condition()
        self._closed = False
        self._joins = 0
        # counters, read by the worker's health endpoint
        self.tokens_generated_total = 0
        self.prompt_tokens_decoded = 0
        self.cached_prompt_tokens = 0
        self.shared_prompt_tokens = 0
        self.kv_leftover_on_join = 0
        self.sequences_started = 0
        self.preemptions = 0
        self.sequence_moves = 0
        self.steps = 0
        self.max_batch_sequences = 0
        self.prefill_first_steps = 0  # steps that held the running streams back for waiting prompts
        # where a step's time goes: inside llama_decode, and the whole step (batch, decode,
        # sampling, handing tokens to readers); the difference is the loop's own Python
        self.decode_us = 0
        self.step_us = 0
        self._thread = threading.Thread(target=self._run, name="llamacpp-batch", daemon=True)
        self._thread.start()

    # -- interface ---------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def active_sequences(self) -> int:
        with self._wake:
            return len(self._active) + len(self._waiting)

    def kv_cells_used(self) -> int:
        with self._wake:
            return sum(s.n_past for s in self._active)

    def submit(self, seq: Sequence, siblings: list[Sequence] | tuple[Sequence, ...] = ()) -> None:
        """Queue a sequence; `siblings` are the other choices of the same request (same prompt),
        which fork from its KV cells once its prompt is decoded."""
        seq.feed = list(seq.prompt)
        for sibling in siblings:
            if sibling.prompt != seq.prompt:
                raise InternalError("the choices of one request must have one prompt")
            sibling.feed = list(sibling.prompt)  # decoded only when it cannot fork
        seq.siblings = list(siblings)
        with self._wake:
            if self._closed:
                raise InternalError("the batching engine is stopped")
            self._waiting.append(seq)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        L = self._L
        for seq in self._waiting:
            for one in (seq, *seq.siblings):
                self._free_sampler(one)
        L.llama_batch_free(self._batch)
        L.llama_free(self._ctx)

    def sequence_state_bytes(self, slot: int) -> int:
        """Bytes of one sequence's state (its KV cells); for the benchmark's memory figure."""
        return int(self._L.llama_state_seq_get_size(self._ctx, slot))

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._active:
                    self._wake.wait()
                if self._closed:
                    for seq in list(self._active):
                        self._leave(seq, None)
                    for seq in self._waiting:
                        self._end_siblings(seq, None)
                        seq.sink(_stopped(seq))
                    return
                self._admit()
            started = time.perf_counter_ns()
            try:
                self._step()
            except ModelportError as exc:
                self._fail_all(exc)
            except Exception as exc:  # a bug of ours or of llama.cpp: say what kind, never the data
                self._fail_all(InternalError(f"the batching engine failed ({type(exc).__name__})"))
            self.step_us += (time.perf_counter_ns() - started) // 1000

    def _admit(self) -> None:
        """Move waiting sequences into free sequence ids while their prompt fits (lock held)."""
        used = sum(s.n_past for s in self._active)
        while self._waiting and self._free_slots:
            seq = self._waiting[0]
            if seq.cancel.is_set():
                self._waiting.popleft()
                self._end_siblings(seq, None)
                self._free_sampler(seq)
                seq.sink(_stopped(seq))  # a preempted sequence has generated tokens already
                continue
            if self._unified and self._active and used + len(seq.feed) + len(self._active) > self.kv_cells:
                break  # wait for room; alone, a sequence always fits (kv_cells >= context)
            self._waiting.popleft()
            seq.slot = self._free_slots.pop()
            if self._L.llama_memory_seq_pos_max(self._mem, seq.slot) != -1:  # never expected
                self.kv_leftover_on_join += 1
                self._L.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
            self._joins += 1
            seq.joined_at = self._joins
            if not seq.generated:
                self.sequences_started += 1
            self._active.append(seq)
            used += len(seq.feed)

    def _step(self) -> None:
        L = self._L
        for seq in [s for s in self._active if s.cancel.is_set()]:
            self._leave(seq, None)
        if not self._active:
            return
        self._compact()
        decoding = [s for s in self._active if len(s.feed) == 1]
        prefilling = sorted((s for s in self._active if len(s.feed) > 1), key=lambda s: s.joined_at)
        # a KV stream per sequence holds its whole context (max_tokens never passes it); a shared
        # cache may be full
        free = self.kv_cells - sum(s.n_past for s in self._active) if self._unified else self._n_batch
        while len(decoding) > free and len(self._active) > 1:  # the KV cache is full: preempt
            self._preempt(max(self._active, key=lambda s: s.joined_at))
            decoding = [s for s in self._active if len(s.feed) == 1]
            prefilling = [s for s in prefilling if s in self._active]
            free = self.kv_cells - sum(s.n_past for s in self._active)
        held_back = bool(decoding and prefilling
                         and time.monotonic_ns() - self._decoded_at < self._prefill_first_ns)
        if held_back:
            # A prompt waiting for its first token goes ahead of the running streams, for at most
            # `prefill_first_ms` since they last got a token: on a CPU a step costs about its
            # tokens, so decoding the streams in the same step delays each waiting prompt's first
            # token by their share, prompt after prompt. Past the bound the streams decode again.
            decoding = []
            self.prefill_first_steps += 1
        budget = min(self._n_batch - len(decoding), free - len(decoding))
        if decoding or held_back:  # held-back streams wait for one chunk at a time, as decoding ones do
            budget = min(budget, self._prefill_chunk)
        takes = {seq: 1 for seq in decoding}
        for seq in prefilling:  # the prefill budget goes to the oldest first, one prompt finished a step
            if budget <= 0:
                break
            takes[seq] = min(budget, len(seq.feed))
            budget -= takes[seq]
            if takes[seq] == len(seq.feed):
                # Its first token comes out at the end of this step. The next prompt waits for the
                # next step instead of delaying this one: on a CPU a prompt costs as much per token
                # with others in its step as alone, so prompts finished one per step reach their
                # first tokens in turn (8 prompts of 19 tokens: median first token at the 4th-5th
                # prompt's prefill, instead of every prompt's at the end of all 152 tokens;
                # measured on llama.cpp's own batch API, 2 threads: 104 ms per prompt alone, 105
                # per prompt with all 8 in one step, median first token 478 vs 842 ms; the raw
                # rows of benchmarks/bench_generation.py).
                break
        # Tokens in increasing sequence id: with a KV stream per sequence, llama.cpp puts only
        # consecutive, increasing sequence ids into one micro-batch (llama_batch_allocr::
        # split_equal, "sequential"), and each micro-batch is a pass over the weights.
        batch = self._batch
        n = 0
        outputs: list[tuple[Sequence, int]] = []
        fed: list[tuple[Sequence, int]] = []
        for seq in sorted(takes, key=lambda s: s.slot):
            take = takes[seq]
            for i in range(take):
                last = i == len(seq.feed) - 1
                self._add(n, seq.feed[i], seq.n_past + i, seq.slot, last)
                if last:
                    outputs.append((seq, n))
                n += 1
            fed.append((seq, take))
        if n == 0:
            return
        batch.n_tokens = n
        started = time.perf_counter_ns()
        ret = L.llama_decode(self._ctx, batch)
        self.decode_us += (time.perf_counter_ns() - started) // 1000
        if ret == 1 and len(self._active) > 1:  # no KV slot found (fragmented): preempt and retry
            for seq, _ in fed:
                L.llama_memory_seq_rm(self._mem, seq.slot, seq.n_past, -1)
            self._preempt(max(self._active, key=lambda s: s.joined_at))
            return
        if ret != 0:
            raise InternalError(f"llama.cpp could not decode a batch (code {ret})")
        self.steps += 1
        self.max_batch_sequences = max(self.max_batch_sequences, len(fed))
        if not held_back:
            self._decoded_at = time.monotonic_ns()
        for seq, take in fed:
            if not seq.generated:  # prompt tokens (again, after a preemption, counted again)
                self.prompt_tokens_decoded += take
            seq.n_past += take
            del seq.feed[:take]
        for seq, index in outputs:
            if seq.siblings:  # its prompt is in the cache now, and these are its logits
                self._fork(seq, index)
            self._sample(seq, index)

    def _release_slot(self, slot: int) -> None:
        """A sequence id is free again (lock held); `pop()` hands out the lowest free id."""
        self._free_slots.append(slot)
        self._free_slots.sort(reverse=True)

    def _compact(self) -> None:
        """Keep the running sequences on the lowest sequence ids (KV stream per sequence only).

        llama.cpp decodes a step in one pass over the weights only when the step's sequence ids
        are consecutive: a hole left by a sequence that ended splits every later step in two.
        So the sequence on the highest id moves into the lowest free one (a copy of its own KV
        cells, `llama_state_seq_get_data`/`set_data`, then its old id is emptied), until the
        running ids are 0..n-1. A move that llama.cpp refuses leaves the sequence where it is."""
        if self._unified:
            return
        L = self._L
        while True:
            with self._wake:
                if not self._free_slots:
                    return
                low = self._free_slots[-1]
            high = max(self._active, key=lambda s: s.slot, default=None)
            if high is None or high.slot < low:
                return
            with self._wake:
                self._free_slots.remove(low)
            if L.llama_memory_seq_pos_max(self._mem, low) != -1:  # never expected
                self.kv_leftover_on_join += 1
                L.llama_memory_seq_rm(self._mem, low, -1, -1)
            if high.n_past:
                size = L.llama_state_seq_get_size(self._ctx, high.slot)
                state = (ctypes.c_uint8 * size)()
                if (L.llama_state_seq_get_data(self._ctx, state, size, high.slot) != size
                        or L.llama_state_seq_set_data(self._ctx, state, size, low) != size):
                    L.llama_memory_seq_rm(self._mem, low, -1, -1)
                    with self._wake:
                        self._release_slot(low)
                    return
            L.llama_memory_seq_rm(self._mem, high.slot, -1, -1)
            with self._wake:
                self._release_slot(high.slot)
            high.slot = low
            self.sequence_moves += 1

    def _fork(self, first: Sequence, index: int) -> None:
        """The other choices of `first`'s request take free sequence ids, a copy of its prompt's
        KV cells, and sample their first token from its logits at `index` (with their own
        samplers). They take only ids that the sequences already waiting would not get at the
        next admission, so no other request waits longer for them; one that finds none waits at
        the back of the queue and decodes its own copy of the prompt."""
        L = self._L
        state: Any = None
        while first.siblings:  # those not yet taken end with `first` if a step fails meanwhile
            seq = first.siblings.pop(0)
            if seq.cancel.is_set():
                self._free_sampler(seq)
                seq.done = True
                seq.sink(None)
                continue
            with self._wake:
                # a free id that no waiting sequence will take at the next admission
                if len(self._free_slots) <= len(self._waiting):
                    self._waiting.append(seq)
                    continue
                seq.slot = self._free_slots.pop()
            if L.llama_memory_seq_pos_max(self._mem, seq.slot) != -1:  # never expected
                self.kv_leftover_on_join += 1
                L.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
            if self._unified:  # one cache: the sibling shares the prompt's cells
                L.llama_memory_seq_cp(self._mem, first.slot, seq.slot, -1, -1)
            else:
                # a KV stream per sequence: copy the prompt's cells only (llama_memory_seq_cp
                # across streams copies a stream's whole buffer, `context_length` cells)
                if state is None:
                    size = L.llama_state_seq_get_size(self._ctx, first.slot)
                    state = (ctypes.c_uint8 * size)()
                    if L.llama_state_seq_get_data(self._ctx, state, size, first.slot) != size:
                        state = ()  # not expected; every sibling decodes its own prompt then
                if not state or L.llama_state_seq_set_data(self._ctx, state, len(state), seq.slot) != len(state):
                    L.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
                    with self._wake:
                        self._release_slot(seq.slot)
                        seq.slot = -1
                        self._waiting.append(seq)
                    continue
            seq.n_past = first.n_past
            seq.feed = []
            self._joins += 1
            seq.joined_at = self._joins
            self.sequences_started += 1
            self.shared_prompt_tokens += len(seq.prompt)
            self._active.append(seq)
            self._sample(seq, index)

    def _end_siblings(self, seq: Sequence, last: Event) -> None:
        """Choices that never forked from `seq` end as it ends (cancelled, failed, stopped)."""
        siblings, seq.siblings = seq.siblings, []
        for sibling in siblings:
            self._free_sampler(sibling)
            sibling.done = True
            sibling.sink(last)

    def _add(self, j: int, token: int, pos: int, slot: int, logits: bool) -> None:
        batch = self._batch
        batch.token[j] = token
        batch.pos[j] = pos
        batch.n_seq_id[j] = 1
        batch.seq_id[j][0] = slot
        batch.logits[j] = logits

    def _sample(self, seq: Sequence, index: int) -> None:
        L = self._L
        if seq.cancel.is_set():
            self._leave(seq, None)
            return
        entry_top = None
        if seq.logprobs is not None:
            entry_top = self._logprobs(index, seq.logprobs)
        if seq.greedy:  # argmax of the logits: what the greedy sampler returns, without its copy of the vocabulary
            token = int(self._np.argmax(self._np.ctypeslib.as_array(L.llama_get_logits_ith(self._ctx, index),
                                                                    shape=(self._n_vocab,))))
        else:
            token = self._sample_checked(seq, index)
            if token < 0:  # the grammar allows no token here: end, never let llama.cpp abort
                self._leave(seq, InvalidInput(
                    "the grammar allows no token of this model at some point of the output; check the grammar",
                    field="grammar"))
                return
        if L.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return
        seq.generated.append(token)
        self.tokens_generated_total += 1
        piece = self._piece(token)
        if entry_top is not None:
            logprob, top = entry_top(token)
            seq.pending_logprobs.append(TokenLogprob(piece, logprob, top))
        out, hit = seq.stopper.feed(seq.decoder.decode(piece))
        if hit:
            self._finish(seq, "stop", out, hit=True)
            return
        if len(seq.generated) >= seq.max_tokens:
            self._finish(seq, "length", out)
            return
        if out:
            seq.sink(Delta(out, logprobs=self._take_logprobs(seq), generated=len(seq.generated)))
        seq.feed = [token]

    def _sample_checked(self, seq: Sequence, index: int) -> int:
        """`llama_sampler_sample`, step by step (the same candidates, apply, pick, accept), with
        one check between pick and accept: the token must be one the chain left possible. A
        grammar that allows nothing leaves every logit at -inf; accepting a token then makes
        llama.cpp abort the whole process (GGML_ABORT in llama_grammar_accept_impl), which would
        end every tenant's stream in this worker. Returns -1 instead."""
        np = self._np
        cand = self._cand
        cand["id"] = self._cand_ids
        cand["logit"] = np.ctypeslib.as_array(self._L.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
        cand["p"] = 0.0
        array = self._cand_array
        # ctypes: the struct field takes the array as a pointer to its first element; llama_cpp annotates the array
        array.data = self._cand_data  # type: ignore[assignment]
        array.size = self._n_vocab
        array.selected = -1
        array.sorted = False
        self._L.llama_sampler_apply(seq.sampler, ctypes.byref(array))
        chosen = int(array.selected)
        if not 0 <= chosen < array.size:
            return -1
        entry = array.data[chosen]
        if not math.isfinite(entry.logit):
            return -1
        token = int(entry.id)
        self._L.llama_sampler_accept(seq.sampler, token)
        return token

    def _logprobs(self, index: int, k: int) -> Callable[[int], tuple[float, tuple[tuple[bytes, float], ...]]]:
        """The model's log-probabilities at this output (before temperature, top-p and grammar):
        a function of the sampled token giving its logprob and the `k` most likely tokens as
        (bytes, logprob), the TokenLogprob shape."""
        import numpy as np

        row = np.ctypeslib.as_array(self._L.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
        logits = row.astype(np.float64)
        peak = float(logits.max())
        lse = peak + math.log(float(np.exp(logits - peak).sum()))
        top: tuple[tuple[bytes, float], ...] = ()
        if k:
            best = np.argpartition(-logits, k - 1)[:k]
            best = best[np.argsort(-logits[best], kind="stable")]
            top = tuple((self._piece(int(t)), float(logits[t]) - lse) for t in best)

        def of(token: int) -> tuple[float, tuple[tuple[bytes, float], ...]]:
            return float(logits[token]) - lse, top

        return of

    @staticmethod
    def _take_logprobs(seq: Sequence) -> tuple[TokenLogprob, ...] | None:
        if seq.logprobs is None:
            return None
        taken, seq.pending_logprobs = tuple(seq.pending_logprobs), []
        return taken

    def _finish(self, seq: Sequence, reason: str, out: str = "", *, hit: bool = False) -> None:
        """The last Delta: text still held back (unless a stop sequence ended it), reason, usage."""
        tail = out if hit else out + seq.stopper.flush() + seq.decoder.decode(b"", final=True)
        scored = self._take_logprobs(seq)
        if hit and not tail:
            scored = None  # only the stop sequence's tokens: never sent, so neither are their logprobs
        self._leave(seq, Delta(tail, finish_reason=reason,  # type: ignore[arg-type]  # reason is stop or length
                               usage=Usage(len(seq.prompt), len(seq.generated)), logprobs=scored))

    def _leave(self, seq: Sequence, last: Event) -> None:
        """Free the sequence's KV cells and id, then tell its reader (last event)."""
        L = self._L
        if seq in self._active:
            self._active.remove(seq)
        if seq.slot >= 0:
            L.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
            with self._wake:
                self._release_slot(seq.slot)
            seq.slot = -1
        # siblings still waiting to fork end with it (a cancel or an error: a first choice that
        # finished has forked them already)
        self._end_siblings(seq, last if isinstance(last, ModelportError) else None)
        self._free_sampler(seq)
        seq.done = True
        seq.sink(_stopped(seq) if last is None else last)

    def _preempt(self, seq: Sequence) -> None:
        """Free a sequence's cells; it waits at the front of the queue to decode them again."""
        L = self._L
        self._active.remove(seq)
        L.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
        with self._wake:
            self._release_slot(seq.slot)
            seq.slot = -1
            seq.feed = [*seq.prompt, *seq.generated]  # the last generated token is not decoded yet
            seq.n_past = 0
            self._waiting.appendleft(seq)
        self.preemptions += 1

    def _fail_all(self, exc: ModelportError) -> None:
        for seq in list(self._active):
            self._leave(seq, exc)
        self._L.llama_memory_clear(self._mem, True)

    def _free_sampler(self, seq: Sequence) -> None:
        if seq.sampler is not None:
            self._L.llama_sampler_free(seq.sampler)
            seq.sampler = None


def _stopped(seq: Sequence) -> Delta:
    """The last Delta of a sequence that was cancelled: the tokens it generated, held-back ones
    included (what its request is billed)."""
    return Delta("", usage=Usage(len(seq.prompt), len(seq.generated)))


def choices_sink(n: int) -> tuple[list[Callable[[Event], None]], Callable[[Callable[[], bool]], Any]]:
    """Sinks for the `n` choices of one request and a reader that yields (choice index, Delta)
    as they come, interleaved, until every choice has ended."""
    events: queue.SimpleQueue[tuple[int, Event]] = queue.SimpleQueue()

    def sink(index: int) -> Callable[[Event], None]:
        return lambda event: events.put((index, event))

    def read(alive: Callable[[], bool]) -> Any:
        running = n
        while running:
            try:
                index, event = events.get(timeout=0.25)
            except queue.Empty:
                if not alive():
                    raise InternalError("the batching engine stopped") from None
                continue
            if event is None:
                running -= 1
                continue
            if isinstance(event, ModelportError):
                raise event
            yield index, event
            if event.finish_reason is not None or event.cancelled:
                running -= 1

    return [sink(i) for i in range(n)], read
