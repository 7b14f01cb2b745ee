"""Rebuild the shipped safety classifier: `python -m tools.safety.train`.

Reproducible (fixed seeds, one thread count, deterministic data order). Steps:
1. read data/train.jsonl (never data/eval.jsonl nor eval_independent/: the evaluation sets are
   only read by evaluate.py), every text in its screening form (safety/text.py), as served;
2. split off 15% of the training data as a calibration slice;
3. run the frozen bottom of the bundled MiniLM once per text and cache its hidden states;
4. fine-tune the top layers + output layer on the rest (binary cross-entropy on the ordinal
   severity outputs and the jailbreak/profanity outputs; bfloat16 autocast where the CPU
   supports it natively, float32 master weights);
5. write model/minilm_safety.safetensors (tuned layers fp16 + output layer);
6. score the calibration slice through the production inference path (MiniLMBackend: the
   shipped fp16 weights, bfloat16 + traced where supported, token windows) and, per output,
   pick the lowest decision threshold whose false-positive rate on the calibration slice is at
   most CALIBRATION_FPR (never tuned on the evaluation set); write model/minilm_safety.json
   (thresholds, base model sha256, training summary, calibration-slice figures).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelport.safety.classifier import (
    CATEGORIES,
    LAYERS,
    MAX_TOKENS,
    META_FILE,
    MODEL_DIR,
    OUTPUTS,
    POOLING,
    SEVERITIES,
    TUNED_LAYERS,
    WEIGHTS_FILE,
    SafetyHead,
    base_model_dir,
    load_base,
)
from modelport.safety.text import screening_form

DATA = Path(__file__).parent / "data" / "train.jsonl"
SEED = 20240611
# Chosen on the calibration slice before the round-3 evaluation run (see model/README.md): a
# category's false positives are benign texts it flags (the measure), at most
# CATEGORY_FPR each, so that the four together stay near the 3%; jailbreak and profanity
# keep CALIBRATION_FPR over every text without the flag. The grid is finer and wider than round
# 2's 0.30..0.95 (step 0.05), whose top forced violence and self_harm to 0.95.
CATEGORY_FPR = 0.01
CALIBRATION_FPR = 0.02
# issue 15: jailbreak false positives must stay at most 1% on benign developer prompts (ids,
# hashes, URLs, code, format instructions), so the jailbreak output is held to 1% of the slice's
# texts without the flag; profanity keeps CALIBRATION_FPR
JAILBREAK_FPR = 0.01
CALIBRATION_RULE = {"categories_on_benign": CATEGORY_FPR, "jailbreak": JAILBREAK_FPR, "profanity": CALIBRATION_FPR}
LAYER_LR = 6e-5
LABEL_SMOOTHING = 0.05  # against the over-confidence seen in round 2 (benign texts at >= 0.98)
THRESHOLD_GRID = [round(x, 2) for x in np.arange(0.20, 0.975, 0.01)]


def load_items(path: Path = DATA) -> list[dict]:
    """The training items, each text in its screening form (`safety.text.screening_form`: what
    the served filter classifies), each with its group (taken before normalising, so a text and
    its augmented copies stay together)."""
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            item["group"] = item.get("group", item["text"])
            item["text"] = screening_form(item["text"])
            items.append(item)
    return items


def unseen_slice(items: list[dict], cal_idx: list[int], earlier: Path) -> list[int]:
    """The calibration slice's items that a delta trained on `earlier` (with this file's split)
    never saw: those in that run's own calibration slice, and those not in `earlier` at all. A
    refreshed delta (--init-from) has seen the rest, and scores a benign text it trained on lower
    than one it did not: thresholds calibrated on them let more false positives through."""
    old = [json.loads(line) for line in earlier.read_text(encoding="utf-8").splitlines() if line.strip()]
    old_cal, _ = split_by_group(old, 0.15, random.Random(SEED))  # noqa: S311 (the same split as then)
    old_groups = {it.get("group", it["text"]) for it in old}
    unseen = {old[i].get("group", old[i]["text"]) for i in old_cal}
    return [i for i in cal_idx if items[i]["group"] in unseen or items[i]["group"] not in old_groups]


def head_state_for_shipping(head: SafetyHead) -> dict[str, torch.Tensor]:
    """Tuned layers in float16 (half the bytes, no measurable loss), output layer in float32."""
    state = {}
    for k, v in head.state_dict().items():
        state[k] = v.detach().to(torch.float16 if k.startswith("layers.") else torch.float32).contiguous()
    return state


def targets(item: dict) -> list[float]:
    """Ordinal targets per category (>=low, >=medium, >=high), then jailbreak, profanity."""
    out = []
    for cat in CATEGORIES:
        level = SEVERITIES.index(item["labels"].get(cat, "safe"))
        out += [float(level >= k) for k in (1, 2, 3)]
    return [*out, float(item["jailbreak"]), float(item["profanity"])]


def split_by_group(items: list[dict], fraction: float, rng: random.Random) -> tuple[list[int], list[int]]:
    """(calibration, training) indices: whole groups (a hand-written text and its augmented
    copies share a group) go to the calibration slice until it holds `fraction` of the items, so
    no calibration text has a near copy in training (with a plain random split, augmented
    copies on both sides made the slice look perfect and pushed every threshold to the floor)."""
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.get("group", it["text"]), []).append(i)
    keys = list(groups)
    rng.shuffle(keys)
    cal: list[int] = []
    train: list[int] = []
    for k in keys:
        (cal if len(cal) < fraction * len(items) else train).extend(groups[k])
    return cal, train


def length_batches(idx: list[int], states: list[torch.Tensor], batch: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of texts of similar length (less padding, about half the compute): the
    shuffled indices are cut into pools of 50 batches, each pool sorted by length and cut into
    batches, and the order of all batches shuffled."""
    idx = list(idx)
    rng.shuffle(idx)
    pool = 50 * batch
    batches = []
    for start in range(0, len(idx), pool):
        chunk = sorted(idx[start : start + pool], key=lambda i: states[i].shape[0])
        batches += [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
    rng.shuffle(batches)
    return batches


@torch.inference_mode()
def encode_bottom(tokenizer, bottom, texts: list[str], batch: int = 64) -> list[torch.Tensor]:
    """Hidden states of the frozen bottom, one [tokens, hidden] tensor per text (no padding kept)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[torch.Tensor | None] = [None] * len(texts)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_TOKENS,
                        return_tensors="pt")
        hidden = bottom(enc["input_ids"], enc["attention_mask"])
        for row, i in enumerate(idx):
            n = int(enc["attention_mask"][row].sum())
            out[i] = hidden[row, :n].clone()
    return out  # type: ignore[return-value]


def collate(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(s.shape[0] for s in states)
    hidden = torch.zeros(len(states), n, states[0].shape[1])
    mask = torch.zeros(len(states), n, dtype=torch.long)
    for i, s in enumerate(states):
        hidden[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return hidden, mask


def production_scores(texts: list[str], model_dir: Path, batch: int = 32) -> np.ndarray:
    """Scores of the shipped model in `model_dir` through the production backend (same dtype,
    tracing and windowing as a served request), in `OUTPUTS` order."""
    from modelport.config import build_settings
    from modelport.safety.backends.base import BackendSettings
    from modelport.safety.backends.minilm import MiniLMBackend

    backend = MiniLMBackend(model_dir=model_dir, settings=BackendSettings.from_settings(build_settings()))
    return np.concatenate([backend.scores(texts[i : i + batch]).numpy() for i in range(0, len(texts), batch)])


def calibrate(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Per output, a threshold that keeps false positives on the calibration slice's benign
    texts at most CATEGORY_FPR for the verdict a user sees. A category is flagged at `medium`
    when its >=medium or its >=high output passes, so (calibrating each output alone let the
    union reach 3.7% for self_harm with 2% per output):
    1. medium: the lowest threshold t for max(P>=medium, P>=high) >= t;
    2. high: the lowest threshold for P>=high alone, but never below medium's (so a text flagged
       through its >=high output also has max >= t: the medium verdict's rate stays bounded);
    3. low: the lowest threshold for P>=low with the medium verdict's flags counted in (when
       the medium verdict already uses the budget, `low` flags little more than `medium`).
    The negatives are the texts without any label. A harmful text of another category that is
    also flagged here (a self-harm note as violence) is a category error, not a false positive:
    counting those held violence at a 0.75 threshold and 0.79 recall on the round-3 slice, with
    0.2% benign texts flagged (as a `low` text scored `medium` is a severity error: counting
    those pushed self_harm>=medium to 0.85 in round 1). Jailbreak and profanity: texts without
    the flag, at most JAILBREAK_FPR and CALIBRATION_FPR."""
    thresholds = {}
    benign = y.sum(1) == 0
    if not benign.any():
        raise ValueError("the calibration slice holds no benign text: category thresholds cannot be bounded")
    for cat in CATEGORIES:
        low, med, high = (probs[benign, OUTPUTS.index(f"{cat}>={lv}")] for lv in ("low", "medium", "high"))
        t_med = _lowest(lambda t, s=np.maximum(med, high): _rate(s >= t), CATEGORY_FPR)
        t_high = max(_lowest(lambda t, s=high: _rate(s >= t), CATEGORY_FPR), t_med)
        medium_verdict = (med >= t_med) | (high >= t_high)
        t_low = _lowest(lambda t, s=low, v=medium_verdict: _rate((s >= t) | v), CATEGORY_FPR)
        thresholds |= {f"{cat}>=low": t_low, f"{cat}>=medium": t_med, f"{cat}>=high": t_high}
    for name, bound in (("jailbreak", JAILBREAK_FPR), ("profanity", CALIBRATION_FPR)):
        j = OUTPUTS.index(name)
        thresholds[name] = _lowest(lambda t, s=probs[y[:, j] == 0, j]: _rate(s >= t), bound)
    return {name: thresholds[name] for name in OUTPUTS}


def _rate(flags: np.ndarray) -> float:
    return float(flags.mean()) if flags.size else 0.0


def _lowest(fpr_at: Callable[[float], float], bound: float) -> float:
    """The lowest grid threshold whose false-positive rate is at most `bound` (else the top)."""
    for t in THRESHOLD_GRID:
        if fpr_at(t) <= bound:
            return float(t)
    return float(THRESHOLD_GRID[-1])


def slice_figures(probs: np.ndarray, y: np.ndarray, thresholds: dict[str, float]) -> dict[str, dict]:
    """Per category on the calibration slice, at the medium threshold (the evaluation's rule: an
    item is flagged when its >=medium or >=high output passes): recall on medium+high items and
    false-positive rate on texts without any label; then jailbreak and profanity."""
    benign = y.sum(1) == 0
    out: dict[str, dict] = {}
    for cat in CATEGORIES:
        jm, jh = OUTPUTS.index(f"{cat}>=medium"), OUTPUTS.index(f"{cat}>=high")
        flagged = (probs[:, jm] >= thresholds[OUTPUTS[jm]]) | (probs[:, jh] >= thresholds[OUTPUTS[jh]])
        pos = y[:, jm] == 1
        out[cat] = {"recall": round(float(flagged[pos].mean()), 3), "positives": int(pos.sum()),
                    "fpr_benign": round(float(flagged[benign].mean()), 3), "benign": int(benign.sum())}
    for name in ("jailbreak", "profanity"):
        j = OUTPUTS.index(name)
        flagged, pos = probs[:, j] >= thresholds[name], y[:, j] == 1
        out[name] = {"recall": round(float(flagged[pos].mean()), 3), "fpr": round(float(flagged[~pos].mean()), 3)}
    return out


def calibrate_shipped(items: list[dict], cal_idx: list[int], y: np.ndarray, out: Path) -> dict:
    """Thresholds and calibration-slice figures of the weights shipped in `out`, scored through
    the production path; written into the model's json."""
    meta_path = out / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["thresholds"] = {name: 0.5 for name in OUTPUTS}  # placeholder while scoring
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    probs = production_scores([items[i]["text"] for i in cal_idx], out)
    thresholds = calibrate(probs, y[cal_idx])
    meta["thresholds"] = thresholds
    meta["calibration_fpr"] = CALIBRATION_RULE
    meta["calibration_items"] = len(cal_idx)
    meta["calibration_slice"] = slice_figures(probs, y[cal_idx], thresholds)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print("thresholds:", thresholds)
    print("calibration slice:", json.dumps(meta["calibration_slice"]))
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=LAYERS, help="base layers used (6 = all; fewer is faster)")
    parser.add_argument("--tuned-layers", type=int, default=TUNED_LAYERS, help="top layers fine-tuned")
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from the delta in this directory (e.g. the shipped one) instead of the base "
                             "model's layers: fewer epochs reach the same loss")
    parser.add_argument("--replay", type=float, default=1.0,
                        help="with --init-from: train on the newest pass's items (`pass` 5) and this fraction of the "
                             "older ones (a short refresh of a trained model; 1.0 = everything)")
    parser.add_argument("--unseen-since", type=Path, default=None,
                        help="the train.jsonl the --init-from delta was trained on: calibrate only on slice texts that "
                             "delta never trained on (its own calibration slice, or newer items), since it has "
                             "seen, and scores lower, the rest")
    parser.add_argument("--states-cache", type=Path, default=None,
                        help="a file to keep the frozen layers' states in between runs on the same data")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="keep the shipped weights, recompute only the thresholds on the calibration slice")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)

    items = load_items()
    rng = random.Random(SEED)  # noqa: S311 (data order, not crypto)
    cal_idx, train_idx = split_by_group(items, 0.15, rng)
    n_cal = len(cal_idx)

    y = np.array([targets(it) for it in items], dtype=np.float32)
    if args.unseen_since is not None:
        cal_idx = unseen_slice(items, cal_idx, args.unseen_since)
        n_cal = len(cal_idx)
        print(f"calibrating on {n_cal} slice texts the earlier delta never trained on")
    if args.replay < 1.0:
        if args.init_from is None:
            parser.error("--replay refreshes a trained model: give --init-from")
        keep = random.Random(SEED + 1)  # noqa: S311 (a data sample, not crypto)
        train_idx = [i for i in train_idx if items[i].get("pass") == 5 or keep.random() < args.replay]
    if args.calibrate_only:
        calibrate_shipped(items, cal_idx, y, args.out)
        return
    tokenizer, bottom, head = load_base(layers=args.layers, tuned=args.tuned_layers)
    if args.init_from is not None:
        from safetensors.torch import load_file

        head.load_state_dict({k: v.float() for k, v in load_file(str(args.init_from / WEIGHTS_FILE)).items()})
    t0 = time.perf_counter()
    digest = hashlib.sha256("\0".join(items[i]["text"] for i in sorted(train_idx)).encode()).hexdigest()
    key = f"{args.layers}-{args.tuned_layers}-{digest}"
    cached = torch.load(args.states_cache) if args.states_cache and args.states_cache.is_file() else None
    if cached is not None and cached.get("key") == key:
        states = cached["states"]
    else:
        needed = sorted(train_idx)  # the calibration slice is scored through the served path instead
        encoded = encode_bottom(tokenizer, bottom, [items[i]["text"] for i in needed])
        states = [torch.empty(0)] * len(items)
        for i, state in zip(needed, encoded, strict=True):
            states[i] = state
        if args.states_cache:
            torch.save({"key": key, "states": states}, args.states_cache)
    print(f"cached bottom states for {len(items)} texts in {time.perf_counter() - t0:.0f}s")

    pos = y[train_idx].sum(0)
    pos_weight = torch.tensor(np.clip((len(train_idx) - pos) / np.maximum(pos, 1), 1.0, 8.0) ** 0.5)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.AdamW(
        [
            {"params": head.layers.parameters(), "lr": LAYER_LR},
            {"params": head.out.parameters(), "lr": 2e-3},
        ],
        weight_decay=0.01,
    )
    batch = 32
    steps = args.epochs * ((len(train_idx) + batch - 1) // batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[LAYER_LR, 2e-3], total_steps=steps,
                                                    pct_start=0.1)
    from modelport.safety.backends.minilm import bf16_supported

    autocast = bf16_supported()
    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        head.train()
        total = 0.0
        t0 = time.perf_counter()
        for idx in length_batches(train_idx, states, batch, rng):
            hidden, mask = collate([states[i] for i in idx])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = head(hidden, mask)
            target = torch.from_numpy(y[idx]) * (1 - LABEL_SMOOTHING) + LABEL_SMOOTHING / 2
            loss = loss_fn(logits.float(), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(train_idx):.4f} ({time.perf_counter() - t0:.0f}s)")

    train_s = time.perf_counter() - t_train
    from safetensors.torch import save_file

    from modelport.catalog.scanning import sha256_file

    args.out.mkdir(parents=True, exist_ok=True)
    save_file(head_state_for_shipping(head), str(args.out / WEIGHTS_FILE))
    meta = {
        "base": "all-MiniLM-L6-v2",
        "base_sha256": sha256_file(base_model_dir() / "model.safetensors"),
        "layers": args.layers,
        "tuned_layers": args.tuned_layers,
        "label_smoothing": LABEL_SMOOTHING,
        "calibration_fpr": CALIBRATION_RULE,
        "pooling": POOLING,
        "max_tokens": MAX_TOKENS,
        "outputs": list(OUTPUTS),
        "thresholds": {},
        "train_items": len(train_idx),
        "calibration_items": n_cal,
        "epochs": args.epochs,
        "replay": args.replay,
        "init_from": "shipped delta" if args.init_from is not None else "base model",
        "bf16_autocast": autocast,
        "train_seconds": round(train_s),
        "seed": SEED,
    }
    (args.out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / WEIGHTS_FILE} (training took {train_s:.0f}s)")
    calibrate_shipped(items, cal_idx, y, args.out)


if __name__ == "__main__":
    main()
