"""Content-safety screening latency on one core: `python benchmarks/bench_safety.py`.

Measures, with torch.set_num_threads(1) and the shipped MiniLM backend:
- screening one 60-word prompt (backend call alone, and through Screener.screen_prompt);
- screening a 400-token output streamed token by token through StreamScreener (buffered):
  per-segment latency and the total screening time of the whole output;
- batched classification (per-text cost at batch 8 and 32);
- the cascade (safety/cascade.py, the served default): its first stage alone, and screening
  through it a new prompt each time (6 and 60 words), and the 400-token stream.
Prints p50/p99 in milliseconds. Target (issue 5): prompt screening under 10 ms p50 on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch

from modelport.config import build_settings
from modelport.safety.backends.base import BackendSettings
from modelport.safety.backends.minilm import MiniLMBackend
from modelport.safety.cascade import HEADS, CascadeBackend, NgramScreen
from modelport.safety.config import ContentFilterConfig
from modelport.safety.screening import Screener

PROMPT_60 = (
    "I have been planning a small garden behind our house this spring and I would like some advice. "
    "The soil is heavy clay, the yard gets about five hours of sun, and we want tomatoes, beans, herbs and a few "
    "flowers for the bees. What should I plant first, how should I improve the soil, and how often should I water?"
)
OUTPUT_SENTENCES = [
    "Clay soil holds water well but drains slowly, so the first step is to add plenty of compost.",
    "Work two or three inches of compost into the top layer of soil before you plant anything.",
    "Raised beds are another good option, because they warm up faster in spring and drain better.",
    "Tomatoes need the sunniest spot you have, and five hours is enough for a modest harvest.",
    "Beans can be sown directly once the soil is warm, usually a week or two after the last frost.",
    "Herbs such as thyme, oregano and rosemary prefer drier soil, so give them the best-drained corner.",
    "For the bees, plant lavender, borage and marigolds along the edges of the beds.",
    "Water deeply once or twice a week rather than a little every day, so roots grow down.",
    "Mulch around the plants to keep moisture in and weeds down during the summer.",
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def report(name: str, ms: list[float]) -> None:
    print(f"{name:<48} p50 {pct(ms, 0.5):7.2f} ms   p99 {pct(ms, 0.99):7.2f} ms   (n={len(ms)})")


def output_tokens(n: int = 400) -> list[str]:
    words: list[str] = []
    while len(words) < n * 3 // 4:  # about 4 tokens per 3 English words
        for s in OUTPUT_SENTENCES:
            words += s.split()
    return [w + " " for w in words[: n * 3 // 4]]


async def stream_once(screener: Screener, tokens: list[str]) -> tuple[float, list[float], dict]:
    stream = screener.stream()
    segment_ms = []
    t_all = time.perf_counter()
    for tok in tokens:
        t = time.perf_counter()
        before = stream.segments
        step = await stream.feed(tok)
        if stream.segments > before:
            segment_ms.append((time.perf_counter() - t) * 1000)
        assert not step.stop  # annotate mode: the stream is never cut, every segment is screened
    t = time.perf_counter()
    await stream.finish()
    segment_ms.append((time.perf_counter() - t) * 1000)
    return (time.perf_counter() - t_all) * 1000, segment_ms, stream.results()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runtime", choices=("auto", "onnx", "torch"), default="auto",
                        help="MiniLM runtime (auto: ONNX Runtime where installed, the served default)")
    parser.add_argument("--dtype", choices=("auto", "int8", "float32", "bfloat16"), default="auto",
                        help="onnx: int8 (auto) or float32; torch: bfloat16 + traced where the CPU supports it "
                             "natively (auto), float32 or bfloat16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    backend = MiniLMBackend(runtime=args.runtime, dtype=args.dtype, threads=args.threads,
                            settings=BackendSettings.from_settings(build_settings()))
    backend.warm_up()
    screener = Screener(backend, ContentFilterConfig())
    # the stream is screened in annotate mode so that all 400 tokens are screened (same cost per
    # segment as blocking mode); a benign output flagged by mistake is reported below
    annotate = {c: {"mode": "annotate"} for c in ("hate", "sexual", "violence", "self_harm")}
    stream_screener = Screener(backend, ContentFilterConfig.model_validate(annotate))
    n_tokens = len(backend._loaded().tokenizer(PROMPT_60)["input_ids"])  # type: ignore[operator]
    words = len(PROMPT_60.split())
    print(f"threads={torch.get_num_threads()} runtime={backend.runtime} dtype={backend.dtype}  "
          f"prompt: {words} words, {n_tokens} tokens")

    for _ in range(10):
        backend.classify([PROMPT_60])
    ms = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        backend.classify([PROMPT_60])
        ms.append((time.perf_counter() - t) * 1000)
    report("prompt, backend.classify (60 words)", ms)

    async def prompts() -> list[float]:
        out = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            await screener.screen_prompt(PROMPT_60)
            out.append((time.perf_counter() - t) * 1000)
        return out

    report("prompt, Screener.screen_prompt (async)", asyncio.run(prompts()))

    tokens = output_tokens(400)
    totals, segments = [], []
    for _ in range(max(5, args.rounds // 20)):
        total, seg, results = asyncio.run(stream_once(stream_screener, tokens))
        totals.append(total)
        segments += seg
    n_seg = len(segments) // len(totals)
    print(f"stream: 400 tokens ({len(''.join(tokens))} chars) -> {n_seg} segments")
    worst = {c: results[c]["severity"] for c in ("hate", "sexual", "violence", "self_harm")}
    print(f"stream: highest severity per category on this benign text: {worst}")
    report("stream, one segment screened", segments)
    report("stream, whole 400-token output", totals)

    for batch in (8, 32):
        texts = [PROMPT_60] * batch
        ms = []
        for _ in range(max(5, args.rounds // batch)):
            t = time.perf_counter()
            backend.classify(texts)
            ms.append((time.perf_counter() - t) * 1000 / batch)
        report(f"batch of {batch} prompts, per prompt", ms)

    # the cascade (served default, MODELPORT_SCREENING_CASCADE): the first stage alone, and
    # Screener.screen_prompt through it on a new text each time (nothing from a cache)
    cascade = CascadeBackend(NgramScreen.load(), backend)
    cascaded = Screener(cascade, ContentFilterConfig())
    need = cascaded.needed("prompt")
    heads = [h for h in HEADS if h in need]
    plain = [f"Please summarise the sales report {i}" for i in range(args.rounds)]
    ms = []
    for text in plain:
        t = time.perf_counter()
        cascade.first.clears([text], heads)
        ms.append((time.perf_counter() - t) * 1000)
    report("cascade: first stage alone, 6-word prompt", ms)
    ms = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        cascade.first.clears([PROMPT_60], heads)
        ms.append((time.perf_counter() - t) * 1000)
    report("cascade: first stage alone, 60-word prompt", ms)

    async def through(texts: list[str]) -> list[float]:
        out = []
        for text in texts:
            t = time.perf_counter()
            await cascaded.screen_prompt(text)
            out.append((time.perf_counter() - t) * 1000)
        return out

    before = cascade.cleared
    report("cascade: screen_prompt, new 6-word prompt", asyncio.run(through(plain)))
    print(f"  cleared by the first stage: {cascade.cleared - before}/{len(plain)}")
    numbered = [f"{PROMPT_60} ({i})" for i in range(args.rounds)]
    before = cascade.cleared
    report("cascade: screen_prompt, new 60-word prompt", asyncio.run(through(numbered)))
    print(f"  cleared by the first stage: {cascade.cleared - before}/{len(numbered)}")
    cascade_stream = Screener(CascadeBackend(NgramScreen.load(), backend),
                              ContentFilterConfig.model_validate(annotate))
    totals = [asyncio.run(stream_once(cascade_stream, tokens))[0] for _ in range(max(5, args.rounds // 20))]
    report("cascade: stream, whole 400-token output", totals)


if __name__ == "__main__":
    main()
