"""A cheap first stage in front of the classifier (issue 15: the cost of screening new text).

Most texts a gateway screens are plainly harmless ("Please summarise the sales report", the
answer to it), and the fine-tuned MiniLM spends about 5-6 ms of CPU on each. `CascadeBackend`
puts a linear model over hashed word and character n-grams (`NgramScreen`, about a tenth of a
millisecond per short text) in front of it: a text whose first-stage scores are under the
"confidently safe" cut of every output the deployment's filter needs (the four categories
always; jailbreak for prompts where it is detected; profanity where it is detected) is answered
as safe in every category without MiniLM; every other text, and every text when the first stage
fails (fail closed), goes to MiniLM exactly as without the cascade.

The cuts are calibrated on the project's own data (`python -m tools.safety.train_cascade`), on
the slice of the training data the first stage never trained on: per output, the cut lets at
most `miss_rate` (1%) of the texts labelled in that output at `medium` or above that MiniLM
alone also flags through unexamined. The file `model/ngram_screen.json` records the cuts, the
rule and what the calibration measured; model/README.md what it gives on the evaluation sets.

Features of a text (its screening form): lower case, digits as 0; word unigrams and bigrams,
punctuation runs, and character 3-5-grams of each word with its boundaries; each hashed
(CRC-32) into `buckets` rows of the weight matrix. A text longer than WINDOW words is scored as
windows of WINDOW words overlapping by half, and a window's highest score counts, so a harmful
sentence is not outweighed by a long harmless answer around it.

Nothing screened is kept: an analysis the first stage answered holds severities and the first
stage's scores, never text (P1).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from modelport.offload import run_blocking
from modelport.safety.backends.base import CATEGORIES, Analysis, SafetyBackend

log = logging.getLogger(__name__)

MODEL_DIR = Path(__file__).parent / "model"
WEIGHTS_FILE = "ngram_screen.safetensors"
META_FILE = "ngram_screen.json"
#: the first stage's outputs, in the order of the weight matrix's columns
HEADS = (*CATEGORIES, "jailbreak", "profanity")
FEATURES_VERSION = "ngram-1"
WINDOW = 12
CHAR_NGRAMS = (3, 4, 5)
MAX_WORD_CHARS = 24  # longer words (hashes, base64) give character n-grams of their first 24 characters
_TOKENS = re.compile(r"\w+|[^\w\s]+")
_DIGITS = re.compile(r"\d")


def _hash(feature: str, buckets: int) -> int:
    return zlib.crc32(feature.encode("utf-8", "surrogatepass")) & (buckets - 1)


@lru_cache(maxsize=65536)
def _token_features(token: str, buckets: int) -> tuple[int, ...]:
    """The hashed unigram of a token and, for a word, its character n-grams (cached: words repeat)."""
    out = [_hash("w" + token, buckets)]
    if token[0].isalnum() or token[0] == "_":
        padded = "<" + token[:MAX_WORD_CHARS] + ">"
        for n in CHAR_NGRAMS:
            out += [_hash("c" + padded[i : i + n], buckets) for i in range(len(padded) - n + 1)]
    return tuple(out)


def tokens(text: str) -> list[str]:
    return _TOKENS.findall(_DIGITS.sub("0", text.lower()))


def window_features(toks: Sequence[str], buckets: int) -> list[np.ndarray]:
    """Per window of at most WINDOW tokens (overlapping by half), its distinct hashed features."""
    if not toks:
        return [np.zeros(0, dtype=np.int64)]
    per_token = [_token_features(t, buckets) for t in toks]
    bigrams = [_hash("b" + a + " " + b, buckets) for a, b in itertools.pairwise(toks)]
    step = WINDOW // 2
    starts = range(0, max(1, len(toks) - WINDOW + step), step) if len(toks) > WINDOW else (0,)
    out = []
    for s in starts:
        idx = [i for feats in per_token[s : s + WINDOW] for i in feats]
        idx += bigrams[s : s + WINDOW - 1]
        out.append(np.unique(np.fromiter(idx, dtype=np.int64, count=len(idx))))
    return out


@dataclass(frozen=True)
class NgramScreen:
    """The first stage: weights (buckets x heads), biases, and the confidently-safe cut per head
    (logits; a text is cleared when every head of every window scores below its cut)."""

    weights: np.ndarray
    bias: np.ndarray
    cuts: np.ndarray
    meta: dict

    @property
    def buckets(self) -> int:
        return int(self.weights.shape[0])

    @classmethod
    def load(cls, model_dir: Path | None = None) -> NgramScreen:
        """Load the shipped first stage. Raises FileNotFoundError / ValueError when it does not fit."""
        from safetensors.numpy import load_file

        folder = model_dir or MODEL_DIR
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        state = load_file(str(folder / WEIGHTS_FILE))
        weights, bias = state["weights"].astype(np.float32), state["bias"].astype(np.float32)
        if meta.get("features") != FEATURES_VERSION or tuple(meta.get("heads", ())) != HEADS:
            raise ValueError(f"the shipped first-stage screen (features {meta.get('features')}) does not fit this "
                             f"code ({FEATURES_VERSION})")
        buckets = int(meta["buckets"])
        if weights.shape != (buckets, len(HEADS)) or bias.shape != (len(HEADS),) or buckets & (buckets - 1):
            raise ValueError("the first-stage screen's weights do not match its json")
        cuts = np.array([float(meta["cuts"][h]) for h in HEADS], dtype=np.float32)
        return cls(weights=weights, bias=bias, cuts=cuts, meta=meta)

    def logits(self, text: str) -> np.ndarray:
        """Per head, the highest logit over the text's windows."""
        windows = window_features(tokens(text), self.buckets)
        return np.max([self.weights[w].sum(0) + self.bias for w in windows], axis=0)

    def clears(self, texts: list[str], heads: Sequence[str] = HEADS) -> list[np.ndarray | None]:
        """Per text, its logits when it is confidently safe in every head of `heads`, else None."""
        cols = [HEADS.index(h) for h in heads]
        out: list[np.ndarray | None] = []
        for text in texts:
            z = self.logits(text)
            out.append(z if bool((z[cols] < self.cuts[cols]).all()) else None)
        return out


def cleared_analysis(logits: np.ndarray, heads: frozenset[str]) -> Analysis:
    """What a text the first stage cleared is answered: safe everywhere, vouched for `heads`
    only (`Analysis.covers`), with its first-stage scores (sigmoids, keyed `first_stage:<head>`)."""
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return Analysis(severities=dict.fromkeys(CATEGORIES, "safe"), covers=heads,
                    scores={f"first_stage:{h}": float(p) for h, p in zip(HEADS, probs, strict=True)})


class CascadeBackend:
    """`first` clears confidently safe texts; `second` (MiniLM) analyses the rest, and every
    text when `first` fails. `name` is the second's, since the verdicts are the second's
    wherever the first is not sure. `cleared` and `passed` count texts (benchmarks, evaluation).

    `analyze_for(texts, need)` (`Screener.needed`): the first stage checks only the heads the
    configuration needs (no jailbreak head for an answer, nor where jailbreak detection is off;
    profanity only where it is on) and clears nothing when the need holds anything it was not
    calibrated for (a category at threshold `low`). `analyze(texts)` needs everything."""

    def __init__(self, first: NgramScreen, second: SafetyBackend) -> None:
        self.first = first
        self.second = second
        self.name = second.name
        self.cleared = 0
        self.passed = 0

    def __getattr__(self, name: str) -> object:
        # runtime details of the second stage (e.g. minilm's `runtime`, `dtype`) for reports
        if name in ("first", "second"):
            raise AttributeError(name)
        return getattr(self.second, name)

    async def analyze(self, texts: list[str]) -> list[Analysis]:
        return await self.analyze_for(texts, None)

    async def analyze_for(self, texts: list[str], need: frozenset[str] | None) -> list[Analysis]:
        heads = frozenset(HEADS) if need is None else need
        # the first stage answers only within what it was calibrated for, and never without the categories
        clearable = heads <= frozenset(HEADS) and frozenset(CATEGORIES) <= heads
        checked = [h for h in HEADS if h in heads] if clearable else None
        classify = getattr(self.second, "classify", None)
        if classify is not None:  # a synchronous second stage (MiniLM): both stages in one worker thread
            first, found = await run_blocking(self._both, texts, checked, classify)
        else:
            first = await run_blocking(self._first, texts, checked)
            rest = [texts[i] for i, z in enumerate(first) if z is None]
            found = await self.second.analyze(rest) if rest else []
        passed = sum(z is None for z in first)
        self.cleared += len(texts) - passed
        self.passed += passed
        if len(found) != passed:  # the Screener refuses an incomplete answer (fail closed)
            return found
        it = iter(found)
        return [cleared_analysis(z, heads) if z is not None else next(it) for z in first]

    def _first(self, texts: list[str], checked: list[str] | None) -> list[np.ndarray | None]:
        """The first stage's clearances; none when it may not answer (`checked` None) or fails."""
        if checked is None:
            return [None] * len(texts)
        try:
            return self.first.clears(texts, checked)
        except Exception as exc:  # fail closed: the first stage is an optimisation, the second screens everything
            # the error's type only: its message could quote the text (P1)
            log.warning("the first-stage safety screen failed (%s); texts go to %s", type(exc).__name__,
                        self.second.name)
            return [None] * len(texts)

    def _both(self, texts: list[str], checked: list[str] | None,
              classify: Callable[[list[str]], list[Analysis]]) -> tuple[list[np.ndarray | None], list[Analysis]]:
        first = self._first(texts, checked)
        rest = [texts[i] for i, z in enumerate(first) if z is None]
        return first, (classify(rest) if rest else [])


def with_cascade(backend: SafetyBackend, model_dir: Path | None = None) -> SafetyBackend:
    """`backend` behind the shipped first stage (only the `minilm` backend: the cuts are
    calibrated against its verdicts). Raises when the first stage cannot be loaded."""
    if backend.name != "minilm":
        return backend
    return CascadeBackend(NgramScreen.load(model_dir), backend)
