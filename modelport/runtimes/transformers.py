"""`transformers`: safetensors models from a local directory, on CPU with PyTorch.

Two kinds of model, told apart by `config.json` (or the `task` option):
- sentence encoders (MiniLM and friends) for embeddings: tokenizer + AutoModel, then the
  pooling that the sentence-transformers `modules.json` describes (mean or CLS pooling,
  L2 normalisation when a Normalize module is listed; mean + normalise when there is none);
- causal LMs for chat/completions: `generate()` with a token streamer, the chat template from
  tokenizer_config.json rendered in our sandbox, the cancel event checked at every step.

Everything loads with `local_files_only=True`; the worker also sets HF_HUB_OFFLINE=1. Nothing
is cached to disk. Options: `task` ("embeddings" | "chat-completion"), `batch_size` (32; texts
are sorted by length first, so a batch pads little).
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modelport.errors import InvalidInput, Unprocessable
from modelport.runtimes.base import (
    TASK_CHAT,
    TASK_COMPLETION,
    TASK_EMBEDDINGS,
    Delta,
    EmbedResult,
    GenerateRequest,
    ModelSpec,
    Runtime,
    StopMatcher,
    Usage,
    check_prompt_fits,
    refuse_unsupported,
)
from modelport.runtimes.prompting import chat_prompt_ids

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise Unprocessable(f"model file {path.name} is not readable JSON", field="model") from exc


def _detect_task(model_dir: Path, options: dict[str, Any]) -> str:
    if "task" in options:
        task = str(options["task"])
        if task not in (TASK_EMBEDDINGS, TASK_CHAT):
            raise InvalidInput("option task must be 'embeddings' or 'chat-completion'", field="options.task")
        return task
    config = _read_json(model_dir / "config.json")
    if not isinstance(config, dict):
        raise Unprocessable("model directory has no config.json; a transformers model needs one",
                            field="model")
    architectures = config.get("architectures") or []
    return TASK_CHAT if any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures) else TASK_EMBEDDINGS


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process (a second model loaded in one test process)


class TransformersRuntime(Runtime):
    name = "transformers"
    tasks = frozenset({TASK_EMBEDDINGS, TASK_CHAT, TASK_COMPLETION})

    def __init__(self, spec: ModelSpec, task: str) -> None:
        super().__init__()
        self._task = task
        self._dir = Path(spec.model_path)
        self._batch_size = int(spec.options.get("batch_size", 32))

    @classmethod
    def load(cls, spec: ModelSpec) -> TransformersRuntime:
        model_dir = Path(spec.model_path)
        if not model_dir.is_dir():
            raise Unprocessable("a transformers model is a directory (config.json, tokenizer, "
                                "*.safetensors); the model path is not one", field="model")
        if spec.lora_path is not None:
            raise InvalidInput("LoRA adapters are supported by the llamacpp runtime only", field="lora")
        task = _detect_task(model_dir, spec.options)
        _set_threads(spec.thread_count)
        runtime = cls(spec, task)
        if task == TASK_EMBEDDINGS:
            runtime._load_encoder()
        else:
            runtime._load_causal()
        return runtime

    @property
    def supported_tasks(self) -> frozenset[str]:
        return frozenset({TASK_EMBEDDINGS}) if self._task == TASK_EMBEDDINGS else frozenset(
            {TASK_CHAT, TASK_COMPLETION})

    @property
    def context_length(self) -> int:
        return self._context_length

    # -- loading ---------------------------------------------------------------------------

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(self._dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise Unprocessable("the model directory has no tokenizer that transformers can load",
                                field="model") from exc

    def _load_encoder(self) -> None:
        import torch
        from transformers import AutoModel

        self._tokenizer = self._load_tokenizer()
        try:
            self._model = AutoModel.from_pretrained(str(self._dir), local_files_only=True,
                                                    dtype=torch.float32, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise Unprocessable("transformers cannot load this model (safetensors weights and a "
                                "supported architecture are needed)", field="model") from exc
        self._model.eval()
        self._pooling, self._normalize = self._read_pooling()
        st_config = _read_json(self._dir / "sentence_bert_config.json") or {}
        limit = int(getattr(self._model.config, "max_position_embeddings", 512))
        self._context_length = min(int(st_config.get("max_seq_length", limit)), limit)

    def _read_pooling(self) -> tuple[str, bool]:
        modules = _read_json(self._dir / "modules.json")
        if not isinstance(modules, list):
            return "mean", True
        pooling, normalize = "mean", False
        for module in modules:
            kind = str(module.get("type", ""))
            if kind.endswith("Pooling"):
                config = _read_json(self._dir / module.get("path", "") / "config.json") or {}
                if config.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif not config.get("pooling_mode_mean_tokens", True):
                    raise Unprocessable("only mean and CLS pooling are supported", field="model")
            elif kind.endswith("Normalize"):
                normalize = True
        return pooling, normalize

    def _load_causal(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self._tokenizer = self._load_tokenizer()
        try:
            self._model = AutoModelForCausalLM.from_pretrained(
                str(self._dir), local_files_only=True, dtype=torch.float32, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise Unprocessable("transformers cannot load this model (safetensors weights and a "
                                "supported architecture are needed)", field="model") from exc
        self._model.eval()
        config = self._model.config
        self._context_length = int(getattr(config, "max_position_embeddings", 2048))
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self._tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = self._tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else min(self._eos_ids, default=0)

    # -- embeddings ------------------------------------------------------------------------

    def count_input_tokens(self, texts: Sequence[str]) -> list[int]:
        if self._task != TASK_EMBEDDINGS:
            return super().count_input_tokens(texts)
        encoded = self._tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        return [len(ids) for ids in encoded]

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        if self._task != TASK_EMBEDDINGS:
            return super().embed(texts)
        import torch

        counts = self.count_input_tokens(texts)
        longest = max(counts, default=0)
        if longest > self._context_length:
            raise InvalidInput(f"an input has {longest} tokens; this model takes at most "
                               f"{self._context_length} per input", field="input")
        # Similar lengths together (little padding); vectors go back in the callers' order.
        order = sorted(range(len(texts)), key=counts.__getitem__)
        vectors: list[list[float]] = [[] for _ in texts]
        with torch.inference_mode():
            for start in range(0, len(texts), self._batch_size):
                chunk = order[start:start + self._batch_size]
                batch = self._tokenizer([texts[i] for i in chunk], padding=True, return_tensors="pt")
                hidden = self._model(**batch).last_hidden_state
                if self._pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                if self._normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                for i, vector in zip(chunk, pooled.tolist(), strict=True):
                    vectors[i] = vector
        return EmbedResult(vectors, sum(counts), counts)

    # -- generation ------------------------------------------------------------------------

    def _prompt_ids(self, messages: Sequence[dict[str, Any]] | None, prompt: str | None) -> list[int]:
        if self._task == TASK_EMBEDDINGS:
            raise InvalidInput("this model does not generate text; it is an embeddings model", field="model")
        tok = self._tokenizer
        if messages is not None:
            template = tok.chat_template
            if not template:
                raise InvalidInput("this model has no chat template; use the completions API",
                                   field="messages")
            # Only the template's markup becomes special tokens; the messages' text never does.
            ids = chat_prompt_ids(template, messages, bos_token=tok.bos_token or "", eos_token=tok.eos_token or "",
                                  tokenize=self._tokenize, control_texts=self._special_texts())
        else:
            ids = tok(prompt or "", add_special_tokens=True)["input_ids"]
        if not ids:
            raise InvalidInput("the prompt is empty", field="prompt")
        return list(ids)

    def _tokenize(self, text: str, special: bool) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"])

    def _special_texts(self) -> list[str]:
        tok = self._tokenizer
        added = [t.content for t in tok.added_tokens_decoder.values() if t.special]
        return sorted(set(tok.all_special_tokens) | set(added))

    def count_tokens(self, *, messages: Sequence[dict[str, Any]] | None = None,
                     prompt: str | None = None, tools: Sequence[dict[str, Any]] | None = None) -> int:
        if self._task == TASK_EMBEDDINGS:
            return sum(self.count_input_tokens([prompt or ""]))
        return len(self._prompt_ids(messages, prompt))

    def generate(self, request: GenerateRequest, cancel: threading.Event) -> Iterator[Delta]:
        refuse_unsupported(request, self.name)
        if request.response_format == "json_object":
            raise InvalidInput("response_format json_object is supported by GGUF models only",
                               field="response_format")
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        ids = self._prompt_ids(request.messages, request.prompt)
        room = check_prompt_fits(len(ids), self._context_length)
        max_new = min(request.max_tokens, room) if request.max_tokens else room
        stopped = threading.Event()  # set when we stop reading (stop sequence, cancel)
        tokens: queue.SimpleQueue[int | BaseException | None] = queue.SimpleQueue()

        class _Streamer(BaseStreamer):
            """Pushes sampled token ids to our queue; the first put() is the prompt."""

            def __init__(self) -> None:
                self.prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                for token in value.reshape(-1).tolist():
                    tokens.put(int(token))

            def end(self) -> None:
                tokens.put(None)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = cancel.is_set() or stopped.is_set()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

        sampling: dict[str, Any] = {"do_sample": False}
        if request.temperature > 0:
            sampling = {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p,
                        "top_k": 0}
        seed = request.seed if request.seed is not None else secrets.randbits(32)

        def run() -> None:
            try:
                # Global RNG: the worker runs one generation at a time, so seeding it is safe.
                torch.manual_seed(seed)
                with torch.inference_mode():
                    self._model.generate(
                        input_ids=torch.tensor([ids]),
                        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                        max_new_tokens=max_new, streamer=_Streamer(),
                        stopping_criteria=StoppingCriteriaList([_Stop()]),
                        pad_token_id=self._pad_id,
                        **sampling,
                    )
            except BaseException as exc:  # handed to the consumer, which re-raises it
                tokens.put(exc)

        thread = threading.Thread(target=run, name="transformers-generate", daemon=True)
        thread.start()
        stopper = StopMatcher(request.stop)
        produced: list[int] = []
        emitted = ""
        finish = "length"
        hit = False
        try:
            while True:
                item = tokens.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                if cancel.is_set():
                    yield Delta("", usage=Usage(len(ids), len(produced)))  # cancelled: what was generated
                    return
                if item in self._eos_ids:
                    finish = "stop"
                    break
                produced.append(item)
                self.tokens_generated_total += 1
                # Decode the whole completion and diff: tokenizers merge pieces (spaces,
                # multi-byte characters); a trailing U+FFFD means a character is unfinished.
                text = self._tokenizer.decode(produced, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    continue
                out, hit = stopper.feed(text[len(emitted):])
                emitted = text
                if out:
                    yield Delta(out, generated=len(produced))
                if hit:
                    finish = "stop"
                    break
            if not hit:
                text = self._tokenizer.decode(produced, skip_special_tokens=True)
                out, hit = stopper.feed(text[len(emitted):])
                if out:
                    yield Delta(out, generated=len(produced))
                finish = "stop" if hit else finish
        finally:
            stopped.set()
            thread.join()
        if len(produced) < max_new and finish == "length" and not cancel.is_set():
            finish = "stop"
        tail = "" if hit else stopper.flush()
        # mypy is told to ignore the next line: stop or length
        yield Delta(tail, finish_reason=finish, usage=Usage(len(ids), len(produced)))  # type: ignore[arg-type]
