"""Evaluate a safety backend on the frozen evaluation set: `python -m tools.safety.evaluate`.

The evaluation set (data/eval.jsonl) was written before the classifier was trained and is
never used for training or tuning; its sha256 is recorded in data/EVAL_SHA256 and this script
refuses to run on a changed file, so figures are always about the same texts.

For each category and each threshold T (low, medium, high) an item counts as positive when
its labelled severity is >= T and as flagged when the predicted severity is >= T. Printed:
precision, recall, and false-positive rate twice: on the benign texts (no category, no
jailbreak, no profanity label) and on every text not labelled in that category. Each figure
carries a Wilson 95% interval, which is what a set of this size allows.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

from modelport.safety.backends.base import CATEGORIES, SEVERITIES, Analysis, SafetyBackend, severity_rank

DATA_DIR = Path(__file__).parent / "data"
INDEPENDENT_DIR = Path(__file__).parent / "eval_independent"
INDEPENDENT_FILES = ("harmful.jsonl", "benign.jsonl", "robustness.jsonl")
EVAL_PATH = DATA_DIR / "eval.jsonl"
SHA_PATH = DATA_DIR / "EVAL_SHA256"
ANSWERS_PATH = DATA_DIR / "answers_heldout.txt"


class EvalSetChanged(Exception):
    """The evaluation file does not match its frozen sha256."""


def load_eval_set(path: Path = EVAL_PATH, sha_path: Path = SHA_PATH) -> list[dict]:
    """The frozen evaluation items; raises EvalSetChanged if the file is not the frozen one."""
    data = path.read_bytes()
    expected = sha_path.read_text(encoding="utf-8").strip()
    if hashlib.sha256(data).hexdigest() != expected:
        raise EvalSetChanged(f"{path.name} does not match its frozen sha256 in {sha_path.name}; "
                             "the evaluation set must not change after it was frozen")
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def load_independent(directory: Path = INDEPENDENT_DIR) -> dict[str, list[dict]]:
    """The independent evaluation set (issue 15), checked against its SHA256SUMS: file name ->
    items. Written by authors who never saw the training data; only this script reads it, and it
    prints aggregate figures only (never a text). Items carry `text` and, like eval.jsonl,
    `labels` ({category: severity}), `jailbreak` and `profanity` where they apply (absent = not)."""
    sums = {}
    for line in (directory / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.lstrip("*")] = digest
    out = {}
    for name in INDEPENDENT_FILES:
        data = (directory / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != sums.get(name):
            raise EvalSetChanged(f"{name} does not match its frozen sha256 in SHA256SUMS")
        items = [_normalised_item(json.loads(line)) for line in data.decode("utf-8").splitlines() if line.strip()]
        unreadable = [i for i, it in enumerate(items) if not _readable(it)]
        if unreadable:
            raise ValueError(f"{len(unreadable)} items of {name} have fields or labels this script cannot read "
                             f"(first: line {unreadable[0] + 1})")
        out[name] = items
    return out


def _normalised_item(raw: dict) -> dict:
    """An item in eval.jsonl's shape: `labels` without its "safe" entries (the independent set
    lists every category), `jailbreak` and `profanity` False where absent. Refuses an item it
    cannot read, naming its fields only (the caller raises: a traceback shows a function's
    arguments, and an evaluation text must never be printed)."""
    labels = {c: s for c, s in (raw.get("labels") or {}).items() if s != "safe"}
    return {"text": raw.get("text"), "labels": labels, "jailbreak": bool(raw.get("jailbreak")),
            "profanity": bool(raw.get("profanity"))}


def _readable(item: dict) -> bool:
    return isinstance(item["text"], str) and all(c in CATEGORIES and s in SEVERITIES[1:]
                                                  for c, s in item["labels"].items())


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (n = 0 gives the whole range)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _fmt(k: int, n: int) -> str:
    if n == 0:
        return "   n/a             "
    lo, hi = wilson(k, n)
    return f"{k / n:5.2f} [{lo:4.2f}-{hi:4.2f}] {k:>3}/{n:<3}"


def is_benign(item: dict) -> bool:
    return not item["labels"] and not item["jailbreak"] and not item["profanity"]


def category_table(items: list[dict], analyses: list[Analysis]) -> list[dict]:
    """Counts per category and threshold (the numbers behind the printed report)."""
    rows = []
    for cat in CATEGORIES:
        for t in SEVERITIES[1:]:
            rank = severity_rank(t)
            tp = fp_all = fp_benign = pos = neg_all = benign = flagged = 0
            for it, an in zip(items, analyses, strict=True):
                truth = severity_rank(it["labels"].get(cat, "safe")) >= rank
                pred = severity_rank(an.severities[cat]) >= rank
                flagged += pred
                pos += truth
                tp += truth and pred
                if cat not in it["labels"]:
                    neg_all += 1
                    fp_all += pred
                if is_benign(it):
                    benign += 1
                    fp_benign += pred
            rows.append({"category": cat, "threshold": t, "tp": tp, "pos": pos, "flagged": flagged,
                         "fp_benign": fp_benign, "benign": benign, "fp_unlabelled": fp_all,
                         "unlabelled": neg_all})
    return rows


def binary_figures(items: list[dict], analyses: list[Analysis], key: str) -> dict:
    tp = sum(1 for it, an in zip(items, analyses, strict=True) if it[key] and getattr(an, key))
    pos = sum(1 for it in items if it[key])
    flagged = sum(1 for an in analyses if getattr(an, key))
    neg = sum(1 for it in items if not it[key])
    return {"tp": tp, "pos": pos, "flagged": flagged, "fp": flagged - tp, "neg": neg}


def report(items: list[dict], analyses: list[Analysis], show_misses: bool = False) -> str:
    lines = [f"evaluation set: {len(items)} texts, {sum(map(is_benign, items))} benign "
             f"({sum(1 for i in items if i.get('tricky'))} of them tricky)", ""]
    lines.append(f"{'category':<10} {'thr':<6} {'recall':<24} {'precision':<24} {'FPR benign':<24} "
                 f"{'FPR not-in-category':<24}")
    for r in category_table(items, analyses):
        lines.append(
            f"{r['category']:<10} {r['threshold']:<6} {_fmt(r['tp'], r['pos']):<24} "
            f"{_fmt(r['tp'], r['flagged']):<24} {_fmt(r['fp_benign'], r['benign']):<24} "
            f"{_fmt(r['fp_unlabelled'], r['unlabelled']):<24}"
        )
    lines.append("")
    any_flag = sum(1 for it, an in zip(items, analyses, strict=True) if is_benign(it)
                   and any(severity_rank(s) >= 2 for s in an.severities.values()))
    lines.append(f"benign texts flagged in any category at medium: {_fmt(any_flag, sum(map(is_benign, items)))}")
    for key in ("jailbreak", "profanity"):
        b = binary_figures(items, analyses, key)
        lines.append(f"{key:<10} recall {_fmt(b['tp'], b['pos'])}  precision {_fmt(b['tp'], b['flagged'])}  "
                     f"FPR {_fmt(b['fp'], b['neg'])}")
    if show_misses:
        lines += ["", "misses and false positives at the medium threshold:"]
        for it, an in zip(items, analyses, strict=True):
            for cat in CATEGORIES:
                truth = severity_rank(it["labels"].get(cat, "safe")) >= 2
                pred = severity_rank(an.severities[cat]) >= 2
                if truth != pred:
                    kind = "MISS" if truth else "FP  "
                    lines.append(f"  {kind} {cat:<9} label={it['labels'].get(cat, 'safe'):<6} "
                                 f"pred={an.severities[cat]:<6} {it['text'][:90]}")
    return "\n".join(lines)


def severity_table(items: list[dict], analyses: list[Analysis]) -> str:
    """Per category and labelled severity: how many items were flagged at the medium threshold,
    and the predicted severities (multi-label items count in every category they carry)."""
    lines = [f"{'category':<10} {'label':<7} {'flagged at medium':<24} predicted safe/low/medium/high"]
    for cat in CATEGORIES:
        for sev in SEVERITIES[1:]:
            rows = [an for it, an in zip(items, analyses, strict=True) if it["labels"].get(cat) == sev]
            k = sum(severity_rank(an.severities[cat]) >= 2 for an in rows)
            dist = "/".join(str(sum(an.severities[cat] == s for an in rows)) for s in SEVERITIES)
            lines.append(f"{cat:<10} {sev:<7} {_fmt(k, len(rows)):<24} {dist}")
    return "\n".join(lines)


def confusion_table(items: list[dict], analyses: list[Analysis]) -> str:
    """Rows: items labelled medium or high in a category (an item counts in each such row), and
    benign items; columns: the share of them flagged at medium in each category, and in none."""
    head = " ".join(f"{c:>9}" for c in CATEGORIES)
    lines = [f"{'labelled':<10} {'n':>4} {head} {'none':>9}"]
    groups = [(cat, [an for it, an in zip(items, analyses, strict=True)
                     if severity_rank(it["labels"].get(cat, "safe")) >= 2]) for cat in CATEGORIES]
    groups.append(("benign", [an for it, an in zip(items, analyses, strict=True) if is_benign(it)]))
    for name, rows in groups:
        if not rows:
            continue
        flagged = [{c for c in CATEGORIES if severity_rank(an.severities[c]) >= 2} for an in rows]
        cells = " ".join(f"{sum(c in f for f in flagged) / len(rows):>9.2f}" for c in CATEGORIES)
        lines.append(f"{name:<10} {len(rows):>4} {cells} {sum(not f for f in flagged) / len(rows):>9.2f}")
    return "\n".join(lines)


def targets_report(items: list[dict], analyses: list[Analysis], benign: list[Analysis],
                   robustness: list[Analysis]) -> str:
    """Issue 15's targets at the default threshold: recall >= 0.85 per category (medium + high
    items of `items`), false positives (medium or above) <= 3% in every category on the benign
    texts `benign`, jailbreak false positives <= 1% on the benign robustness set."""
    lines = []
    for r in category_table(items, analyses):
        if r["threshold"] != "medium":
            continue
        recall = r["tp"] / r["pos"] if r["pos"] else 0.0
        fp, n = sum(severity_rank(an.severities[r["category"]]) >= 2 for an in benign), len(benign)
        fpr = fp / n if n else 0.0
        lines.append(f"  {r['category']:<10} recall {_fmt(r['tp'], r['pos'])} "
                     f"{'met' if recall >= 0.85 else 'MISSED'} (>= 0.85); "
                     f"benign FP {_fmt(fp, n)} {'met' if fpr <= 0.03 else 'MISSED'} (<= 0.03)")
    n = len(benign)
    anyc = sum(any(severity_rank(s) >= 2 for s in an.severities.values()) for an in benign)
    lines.append(f"  benign texts flagged in some category {_fmt(anyc, n)}; as jailbreak "
                 f"{_fmt(sum(an.jailbreak for an in benign), n)}")
    n = len(robustness)
    jb = sum(an.jailbreak for an in robustness)
    lines.append(f"  jailbreak FP on the robustness set {_fmt(jb, n)} {'met' if n and jb / n <= 0.01 else 'MISSED'} "
                 "(<= 0.01)")
    cat = sum(any(severity_rank(s) >= 2 for s in an.severities.values()) for an in robustness)
    lines.append(f"  robustness set flagged in some category at medium {_fmt(cat, n)}")
    prof = sum(an.profanity for an in robustness)
    lines.append(f"  robustness set flagged as profanity {_fmt(prof, n)}")
    return "\n".join(lines)


def independent_report(sets: dict[str, list[dict]], analyses: dict[str, list[Analysis]]) -> str:
    """The whole independent report: harmful and benign together (the category tables), the
    robustness set on its own (jailbreak and category false positives)."""
    items = sets["harmful.jsonl"] + sets["benign.jsonl"]
    found = analyses["harmful.jsonl"] + analyses["benign.jsonl"]
    robust_items, robust = sets["robustness.jsonl"], analyses["robustness.jsonl"]
    per_cat = {c: sum(severity_rank(it["labels"].get(c, "safe")) >= 2 for it in items) for c in CATEGORIES}
    lines = [f"independent set: {len(sets['harmful.jsonl'])} harmful, {len(sets['benign.jsonl'])} benign, "
             f"{len(robust_items)} robustness texts; medium-or-high items per category: {per_cat}; "
             f"items with two or more categories: {sum(len(it['labels']) > 1 for it in items)}; "
             f"robustness items labelled harmful/jailbreak: "
             f"{sum(not is_benign(it) for it in robust_items)}", ""]
    lines.append(report(items, found))
    lines += ["", "per labelled severity:", severity_table(items, found)]
    lines += ["", "confusion across categories at medium (share of each row flagged in each column):",
              confusion_table(items, found)]
    robust_benign = [a for it, a in zip(robust_items, robust, strict=True) if is_benign(it)]
    lines += ["", "targets (issue 15):", targets_report(items, found, analyses["benign.jsonl"], robust_benign)]
    return "\n".join(lines)


class AnswerResult(NamedTuple):
    severities: dict[str, str]  # highest severity per category over the answer's segments
    cut: bool  # the stream would have been stopped


def load_answers() -> list[str]:
    return [a for a in ANSWERS_PATH.read_text(encoding="utf-8").splitlines() if a.strip()]


async def screen_answers(backend: SafetyBackend, answers: list[str]) -> list[AnswerResult]:
    """Each benign answer streamed word by word through the served output filter (the default
    configuration: buffered, block at medium)."""
    from modelport.safety.config import ContentFilterConfig
    from modelport.safety.screening import Screener

    screener = Screener(backend, ContentFilterConfig())
    out = []
    for text in answers:
        stream = screener.stream()
        for word in text.split(" "):
            if (await stream.feed(word + " ")).stop:
                break
        else:
            await stream.finish()
        results = stream.results()
        out.append(AnswerResult({c: results[c]["severity"] for c in CATEGORIES}, stream.filtered))
    return out


def answers_report(rows: list[AnswerResult]) -> str:
    """How many held-out benign answers the output filter would cut, per category, with intervals."""
    n = len(rows)
    lines = [f"held-out benign model answers (data/{ANSWERS_PATH.name}, streamed through the output "
             f"filter at medium): {n}",
             f"  cut:                               {_fmt(sum(r.cut for r in rows), n)}"]
    for cat in CATEGORIES:
        k = sum(severity_rank(r.severities[cat]) >= 2 for r in rows)
        lines.append(f"  {cat:<9} medium or high in some segment: {_fmt(k, n)}")
    return "\n".join(lines)


def analyze_all(backend: SafetyBackend, items: list[dict]) -> list[Analysis]:
    """Each item's analysis, of its screening form (what the served filter classifies)."""
    from modelport.safety.text import screening_form

    out: list[Analysis] = []
    for start in range(0, len(items), 32):
        out += asyncio.run(backend.analyze([screening_form(it["text"]) for it in items[start : start + 32]]))
    return out


#: what the default configuration needs of a prompt's analysis (`Screener.needed`): every
#: category at medium, jailbreak (on, annotating); profanity is off by default
DEFAULT_PROMPT_NEED = frozenset((*CATEGORIES, "jailbreak"))


def cascaded(items: list[dict], alone: list[Analysis], model_dir: Path | None = None,
             need: frozenset[str] = DEFAULT_PROMPT_NEED) -> tuple[list[Analysis], list[bool]]:
    """What the cascade (safety/cascade.py) answers for each item, given MiniLM's own analyses
    `alone`: the first stage's cleared answer where it is sure for `need`, else MiniLM's (as
    `CascadeBackend` does); and whether each item was cleared."""
    from modelport.safety.cascade import HEADS, NgramScreen, cleared_analysis
    from modelport.safety.text import screening_form

    screen = NgramScreen.load(model_dir)
    first = screen.clears([screening_form(it["text"]) for it in items], [h for h in HEADS if h in need])
    return ([cleared_analysis(z, need) if z is not None else a for z, a in zip(first, alone, strict=True)],
            [z is not None for z in first])


def cascade_report(items: list[dict], alone: list[Analysis], cascade: list[Analysis], cleared: list[bool]) -> str:
    """Recall at medium of MiniLM alone and of the cascade per category (Wilson 95%), how many
    items MiniLM alone flags that the cascade clears, and how many texts went to MiniLM."""
    lines = [f"{'category':<10} {'recall, MiniLM alone':<26} {'recall, cascade':<26} flagged by MiniLM, cleared"]
    for cat in CATEGORIES:
        pos = [i for i, it in enumerate(items) if severity_rank(it["labels"].get(cat, "safe")) >= 2]
        a = sum(severity_rank(alone[i].severities[cat]) >= 2 for i in pos)
        c = sum(severity_rank(cascade[i].severities[cat]) >= 2 for i in pos)
        lines.append(f"{cat:<10} {_fmt(a, len(pos)):<26} {_fmt(c, len(pos)):<26} {a - c}")
    for name, keep in (("benign", is_benign), ("harmful or flagged", lambda it: not is_benign(it))):
        idx = [i for i, it in enumerate(items) if keep(it)]
        lines.append(f"{name} texts cleared by the first stage (not sent to MiniLM): "
                     f"{_fmt(sum(cleared[i] for i in idx), len(idx))}")
    jb_lost = sum(1 for it, a, c in zip(items, alone, cascade, strict=True) if it["jailbreak"] and a.jailbreak
                  and not c.jailbreak)
    lines.append(f"jailbreak items MiniLM flags that the cascade clears: {jb_lost}")
    return "\n".join(lines)


def model_id(model_dir: Path | None) -> str:
    """Which model a report is about: the first 12 hex digits of the sha256 of the delta's weights,
    then of its json (thresholds)."""
    from modelport.safety.classifier import META_FILE, MODEL_DIR, WEIGHTS_FILE

    folder = model_dir or MODEL_DIR
    return "/".join(hashlib.sha256((folder / name).read_bytes()).hexdigest()[:12] for name in (WEIGHTS_FILE, META_FILE))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a safety backend on the frozen evaluation set.")
    parser.add_argument("--backend", default="minilm", help="registered backend name (default: minilm)")
    parser.add_argument("--show-misses", action="store_true",
                        help="list the evaluation texts the backend got wrong at the medium threshold")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="minilm only: a delta other than the shipped one (e.g. a candidate from train.py --out)")
    parser.add_argument("--independent", action="store_true",
                        help="the independent set (eval_independent/, issue 15) instead of data/eval.jsonl: run "
                             "it once per shipped model; it prints aggregate figures only")
    parser.add_argument("--answers-only", action="store_true",
                        help="only the held-out benign model answers, not the evaluation set")
    parser.add_argument("--cascade", action="store_true",
                        help="minilm only: also the cascade (safety/cascade.py, the served default): its figures, and "
                             "recall beside MiniLM alone's; the independent set is then reported for the cascade")
    parser.add_argument("--runtime", choices=("auto", "onnx", "torch"), default=None,
                        help="minilm only: runtime (default: the backend's, onnx where installed)")
    parser.add_argument("--dtype", choices=("auto", "int8", "float32", "bfloat16"), default=None,
                        help="minilm only: inference dtype (default: the backend's; onnx: int8, torch: "
                             "bfloat16 where native)")
    args = parser.parse_args(argv)

    import torch

    from modelport.config import build_settings
    from modelport.safety.backends import BackendSettings, create_backend

    torch.set_num_threads(args.threads)
    options = {k: v for k, v in (("runtime", args.runtime), ("dtype", args.dtype), ("model_dir", args.model_dir)) if v}
    backend: SafetyBackend = create_backend(args.backend, settings=BackendSettings.from_settings(build_settings()),
                                            **options)
    if args.answers_only:
        print(answers_report(asyncio.run(screen_answers(backend, load_answers()))))
        return
    dtype = " ".join(str(getattr(backend, k)) for k in ("runtime", "dtype") if getattr(backend, k, None))
    if args.independent:
        if args.show_misses:
            parser.error("--show-misses is not available for the independent set: its texts stay unread")
        sets = load_independent()
        t0 = time.perf_counter()
        found = {name: analyze_all(backend, items) for name, items in sets.items()}
        print(f"backend {backend.name}{f' ({dtype})' if dtype else ''}, model {model_id(args.model_dir)}: "
              f"{sum(map(len, sets.values()))} texts in {time.perf_counter() - t0:.1f}s\n")
        if args.cascade:
            alone, cleared = found, {}
            found = {}
            for name, items in sets.items():
                found[name], cleared[name] = cascaded(items, alone[name])
            print("CASCADE (first stage + MiniLM), the configuration reported below; beside MiniLM alone:")
            both = sets["harmful.jsonl"] + sets["benign.jsonl"]
            print(cascade_report(both, alone["harmful.jsonl"] + alone["benign.jsonl"],
                                 found["harmful.jsonl"] + found["benign.jsonl"],
                                 cleared["harmful.jsonl"] + cleared["benign.jsonl"]))
            n_robust = len(sets["robustness.jsonl"])
            print(f"robustness texts cleared by the first stage: {_fmt(sum(cleared['robustness.jsonl']), n_robust)}\n")
        print(independent_report(sets, found))
        return
    items = load_eval_set()
    t0 = time.perf_counter()
    analyses = analyze_all(backend, items)
    print(f"backend {backend.name}{f' ({dtype})' if dtype else ''}: {len(items)} texts in "
          f"{time.perf_counter() - t0:.1f}s\n")
    if args.cascade:
        alone = analyses
        analyses, cleared = cascaded(items, alone)
        print("cascade (first stage + MiniLM) beside MiniLM alone, at medium:")
        print(cascade_report(items, alone, analyses, cleared))
        print("\nCASCADE, the whole report:")
    print(report(items, analyses, show_misses=args.show_misses))
    lines = ["", "per labelled severity:", severity_table(items, analyses), "",
             "confusion across categories at medium (share of each row flagged in each column):",
             confusion_table(items, analyses)]
    print("\n".join(lines))
    if ANSWERS_PATH.exists():
        print("\n" + answers_report(asyncio.run(screen_answers(backend, load_answers()))))


if __name__ == "__main__":
    main()
