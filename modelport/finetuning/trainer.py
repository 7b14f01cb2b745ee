"""The trainer process: `python -m modelport.finetuning.trainer --in-fd N --out-fd M`.

Started by the runner like a model worker: its own process, its own network namespace (no
route out), under its own uid where the machine allows, with the platform's home hidden. It
never talks to a key provider or the blob store: the server decrypts the datasets and streams
the plaintext over the inherited input pipe, and the trainer keeps it in memory only.

Why a plain torch loop and not `transformers.Trainer`/`datasets`: those write checkpoints,
tokenised caches and logs to disk by default, and nothing derived from training text may lie
on disk unencrypted (P11). Here nothing is written at all: the adapter GGUF is built in a
memfd and sent back over the output pipe, and the server encrypts it into the datastore.

Input pipe: one JSON line (the spec, below), then the training data and then the validation
data, each as frames `[4-byte big-endian length][bytes]` ended by a zero-length frame.
Output pipe, JSON lines: {"event": "loaded", ...}, {"event": "progress", "step", "total_steps",
"train_loss", "validation_loss", "eta_seconds", "tokens"}, then {"event": "adapter", "size": n}
followed by n raw bytes, then {"event": "done", ...}; or {"event": "error", "message"}.
Error messages are fixed texts about the data's shape, never a value from it (P1).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import struct
import sys
import time
from typing import Any, BinaryIO

import orjson

DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 4,
    "learning_rate": 1e-3,
    "lora_rank": 16,
    "lora_alpha": 32,
    "max_seq_len": 256,
    "seed": 0,
}


class DataError(Exception):
    """A problem with the training data a person can fix; the message holds no data."""


def read_frames(stream: BinaryIO) -> bytes:
    parts: list[bytes] = []
    while True:
        header = stream.read(4)
        if len(header) != 4:
            raise DataError("the training data stream was cut")
        (n,) = struct.unpack(">I", header)
        if n == 0:
            return b"".join(parts)
        chunk = stream.read(n)
        if len(chunk) != n:
            raise DataError("the training data stream was cut")
        parts.append(chunk)


def records(raw: bytes) -> list[list[dict[str, str]]]:
    """JSONL (chat or prompt/completion, validated at upload) -> lists of messages."""
    out = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        rec = orjson.loads(line)
        if "messages" in rec:
            out.append([{"role": m["role"], "content": m["content"]} for m in rec["messages"]])
        else:
            out.append([{"role": "user", "content": rec["prompt"]},
                        {"role": "assistant", "content": rec["completion"]}])
    return out


def encode(tok: Any, messages: list[dict[str, str]], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels; only assistant turns (content and end token) carry a loss.

    The chat template is rendered for each growing prefix of the conversation and each new
    piece tokenised on its own; pieces start and end at the template's special tokens, so
    the concatenation is the tokenisation of the whole conversation as inference sees it.
    """
    ids: list[int] = []
    labels: list[int] = []
    prev = ""
    for k in range(1, len(messages) + 1):
        text = tok.apply_chat_template(messages[:k], tokenize=False)
        if not text.startswith(prev):
            raise DataError("the model's chat template does not render conversations incrementally")
        piece_ids = tok(text[len(prev):], add_special_tokens=False)["input_ids"]
        learn = 0
        if messages[k - 1]["role"] == "assistant":
            header = tok.apply_chat_template(messages[: k - 1], tokenize=False, add_generation_prompt=True)
            header_len = len(tok(header[len(prev):], add_special_tokens=False)["input_ids"])
            learn = len(piece_ids) - header_len
        ids += piece_ids
        labels += [-100] * (len(piece_ids) - learn) + piece_ids[len(piece_ids) - learn:]
        prev = text
    return ids[:max_len], labels[:max_len]


def batches(examples: list[tuple[list[int], list[int]]], size: int, pad: int, rng: random.Random,
            shuffle: bool = True) -> list[tuple[Any, Any, Any, int]]:
    import torch

    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
    out = []
    for start in range(0, len(order), size):
        chunk = [examples[i] for i in order[start:start + size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in chunk])
        lab = torch.tensor([y + [-100] * (width - len(y)) for _, y in chunk])
        att = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in chunk])
        out.append((ids, att, lab, sum(len(x) for x, _ in chunk)))
    return out


class Emitter:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, event: dict[str, Any], payload: bytes = b"") -> None:
        data = memoryview(orjson.dumps(event) + b"\n" + payload)
        while data:
            data = data[os.write(self.fd, data):]


def train(spec: dict[str, Any], train_raw: bytes, val_raw: bytes, out: Emitter) -> None:
    import torch

    threads = int(spec.get("threads") or 1)
    torch.set_num_threads(threads)
    hp = {**DEFAULTS, **spec.get("hyperparameters", {})}
    seed = int(hp["seed"])
    random.seed(seed)
    torch.manual_seed(seed)
    started = time.monotonic()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model_dir, model_file = spec["model_dir"], spec["model_file"]
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=model_file)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=model_file, dtype=torch.float32)
    device = "cuda" if spec.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    # transformers types .to() through a decorator that hides its signature (its annotation expects a model first)
    model.to(device)  # type: ignore[arg-type]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    max_len = int(hp["max_seq_len"])
    train_ex = [encode(tok, m, max_len) for m in records(train_raw)]
    val_ex = [encode(tok, m, max_len) for m in records(val_raw)] if val_raw else []
    if not any(any(label != -100 for label in y) for _, y in train_ex):
        raise DataError("no assistant tokens are left to learn from within max_seq_len")
    out.send({"event": "loaded", "seconds": round(time.monotonic() - started, 3), "device": device,
              "examples": len(train_ex)})

    cfg = model.config
    lora = LoraConfig(r=int(hp["lora_rank"]), lora_alpha=int(hp["lora_alpha"]), lora_dropout=0.0,
                      target_modules=list(_target_modules()), bias="none")
    peft_model = get_peft_model(model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(hp["learning_rate"]))
    epochs = int(hp["epochs"])
    batch_size = int(hp["batch_size"])
    per_epoch = math.ceil(len(train_ex) / batch_size)
    total = per_epoch * epochs
    rng = random.Random(seed)  # noqa: S311 - shuffling order, reproducible by design
    val_batches = batches(val_ex, batch_size, pad, rng, shuffle=False) if val_ex else []
    step = 0
    tokens = 0
    train_seconds = 0.0
    for _epoch in range(epochs):
        for ids, att, lab, n_tok in batches(train_ex, batch_size, pad, rng):
            t0 = time.monotonic()
            peft_model.train()
            loss = peft_model(input_ids=ids.to(device), attention_mask=att.to(device), labels=lab.to(device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_loss = float(loss.detach())
            step += 1
            tokens += n_tok
            train_seconds += time.monotonic() - t0
            val_loss = _evaluate(peft_model, val_batches, device) if val_batches else None
            eta = train_seconds / step * (total - step)
            out.send({"event": "progress", "step": step, "total_steps": total, "train_loss": round(train_loss, 5),
                      "validation_loss": None if val_loss is None else round(val_loss, 5),
                      "eta_seconds": round(eta, 1), "tokens": tokens, "train_seconds": round(train_seconds, 3)})
    from modelport.finetuning.lora_gguf import build_adapter_gguf

    state = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    adapter = build_adapter_gguf(state, arch=spec.get("arch", "llama"), alpha=float(hp["lora_alpha"]),
                                 n_head=cfg.num_attention_heads,
                                 n_head_kv=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
                                 name=spec.get("name", "adapter"))
    out.send({"event": "adapter", "size": len(adapter)}, adapter)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.send({"event": "done", "steps": step, "tokens": tokens, "train_seconds": round(train_seconds, 3),
              "peak_rss_bytes": peak, "seconds": round(time.monotonic() - started, 3)})


def _target_modules() -> tuple[str, ...]:
    from modelport.finetuning.lora_gguf import TARGET_MODULES

    return TARGET_MODULES


def _evaluate(model: Any, val_batches: list[tuple[Any, Any, Any, int]], device: str) -> float:
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for ids, att, lab, _ in val_batches:
            total += float(model(input_ids=ids.to(device), attention_mask=att.to(device),
                                 labels=lab.to(device)).loss)
    return total / len(val_batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelport.finetuning.trainer")
    parser.add_argument("--in-fd", type=int, required=True)
    parser.add_argument("--out-fd", type=int, required=True)
    args = parser.parse_args(argv)
    out = Emitter(args.out_fd)
    try:
        with os.fdopen(args.in_fd, "rb") as stream:
            spec = orjson.loads(stream.readline())
            train_raw = read_frames(stream)
            val_raw = read_frames(stream)
        train(spec, train_raw, val_raw, out)
    except DataError as exc:
        out.send({"event": "error", "code": "invalid_data", "message": str(exc)})
        return 2
    except MemoryError:
        out.send({"event": "error", "code": "out_of_memory",
                  "message": "the trainer ran out of memory; use a smaller batch size or shorter examples"})
        return 3
    except Exception as exc:  # the type only: a message could quote training data
        out.send({"event": "error", "code": "internal_error",
                  "message": f"the trainer failed ({type(exc).__name__}); see the server log"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
