"""Train and calibrate the cascade's first stage: `python -m tools.safety.train_cascade`.

Reads only data/train.jsonl (never eval.jsonl nor eval_independent/). Steps:
1. split the training data by group exactly as `train.py` does (15% calibration slice, seed
   fixed), every text in its screening form;
2. train a linear model over hashed n-grams (`modelport.safety.cascade`) on the rest: one
   logistic output per head (each category at any severity, jailbreak, profanity), sparse
   Adam, a fixed number of epochs;
3. score the slice with it and with the shipped MiniLM (the served path), and per head set the
   confidently-safe cut: the lowest first-stage logit among the slice's positives for that head
   (labelled in it, or flagged by MiniLM at `low` or above) after the `--miss-rate` share of
   them, so at most that share of them is cleared without MiniLM;
4. write model/ngram_screen.safetensors (weights float16, biases float32) and
   model/ngram_screen.json (cuts, rule, slice figures).
Deterministic: fixed seeds, one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from modelport.safety.backends.base import CATEGORIES, SEVERITIES
from modelport.safety.cascade import (
    FEATURES_VERSION,
    HEADS,
    META_FILE,
    MODEL_DIR,
    WEIGHTS_FILE,
    WINDOW,
    NgramScreen,
    tokens,
    window_features,
)
from tools.safety.train import SEED, load_items, split_by_group

BUCKETS = 2**18
EPOCHS = 2
MISS_RATE = 0.01
LR = 0.005
L2_WINDOW = 0.05
BIAS_LR = 0.02


def head_targets(item: dict) -> list[float]:
    """Per head: the category labelled at any severity; jailbreak; profanity."""
    return [*(float(c in item["labels"]) for c in CATEGORIES), float(item["jailbreak"]), float(item["profanity"])]


def train(feats: list[list[np.ndarray]], y: np.ndarray, epochs: int,
          rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """A text's logit per head is its highest window's (as served); binary cross-entropy on
    that, plus L2_WINDOW times the mean squared window logit before the bias: without it the
    model grew very confident on the tricky texts of the training data (benign texts written
    to look harmful, harmful ones without a trigger word) and scored some harmful texts far
    below plain harmless ones, so no cut could clear plain text (measured: 0% of plain prompts
    cleared at a 1% miss rate; with it, 90%)."""
    bag = torch.nn.EmbeddingBag(BUCKETS, len(HEADS), mode="sum", sparse=True)
    torch.nn.init.zeros_(bag.weight)
    bias = torch.nn.Parameter(torch.zeros(len(HEADS)))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    sparse_opt = torch.optim.SparseAdam(list(bag.parameters()), lr=LR)
    dense_opt = torch.optim.Adam([bias], lr=BIAS_LR)
    order = list(range(len(feats)))
    target = torch.tensor(y)
    for epoch in range(epochs):
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            windows = [torch.from_numpy(w) for i in batch for w in feats[i]]
            owner = torch.tensor([j for j, i in enumerate(batch) for _ in feats[i]])
            offsets = torch.tensor([0, *np.cumsum([len(w) for w in windows])[:-1].tolist()])
            raw = bag(torch.cat(windows), offsets)
            per_text = torch.full((len(batch), len(HEADS)), -1e9).scatter_reduce(
                0, owner[:, None].expand(-1, len(HEADS)), raw + bias, "amax")
            loss = loss_fn(per_text, target[batch]) + L2_WINDOW * raw.pow(2).mean()
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss.backward()
            sparse_opt.step()
            dense_opt.step()
            total += float(loss.detach()) * len(batch)
        print(f"epoch {epoch + 1}: loss {total / len(order):.4f}")
    return bag.weight.detach().numpy().copy(), bias.detach().numpy().copy()


def minilm_flags(texts: list[str]) -> np.ndarray:
    """Per text and head, whether the shipped MiniLM (served path) flags it: a category at
    `medium` or above, jailbreak, profanity."""
    from modelport.safety.backends.minilm import MiniLMBackend

    backend = MiniLMBackend(threads=1)
    rows = []
    for start in range(0, len(texts), 32):
        for an in backend.classify(texts[start : start + 32]):
            rows.append([*(float(SEVERITIES.index(an.severities[c]) >= 2) for c in CATEGORIES),
                         float(an.jailbreak), float(an.profanity)])
    return np.array(rows, dtype=np.float32)


def labelled(item: dict) -> list[float]:
    """Per head, what the label says at the default threshold: a category at `medium` or above,
    jailbreak, profanity."""
    return [*(float(SEVERITIES.index(item["labels"].get(c, "safe")) >= 2) for c in CATEGORIES),
            float(item["jailbreak"]), float(item["profanity"])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--miss-rate", type=float, default=MISS_RATE)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    rng = random.Random(SEED)  # noqa: S311 (data order, not crypto)

    items = load_items()
    cal_idx, train_idx = split_by_group(items, 0.15, random.Random(SEED))  # noqa: S311 (train.py's split)
    t0 = time.perf_counter()
    feats = [window_features(tokens(it["text"]), BUCKETS) for it in items]
    y = np.array([head_targets(it) for it in items], dtype=np.float32)
    weights, bias = train([feats[i] for i in train_idx], y[train_idx], args.epochs, rng)
    weights = weights.astype(np.float16)  # what ships; the cuts are set on these
    print(f"trained on {len(train_idx)} texts in {time.perf_counter() - t0:.0f}s")

    screen = NgramScreen(weights=weights.astype(np.float32), bias=bias, cuts=np.zeros(len(HEADS)), meta={})
    cal_texts = [items[i]["text"] for i in cal_idx]
    z = np.array([screen.logits(t) for t in cal_texts])
    t0 = time.perf_counter()
    flags = minilm_flags(cal_texts)
    print(f"MiniLM scored the slice ({len(cal_texts)} texts) in {time.perf_counter() - t0:.0f}s")
    # what the cascade could lose: texts harmful by their label that MiniLM alone flags
    positive = np.array([labelled(items[i]) for i in cal_idx], dtype=np.float32) * flags
    benign = np.array([not items[i]["labels"] and not items[i]["jailbreak"] and not items[i]["profanity"]
                       for i in cal_idx])
    cuts, figures = {}, {}
    for h, head in enumerate(HEADS):
        scores = np.sort(z[positive[:, h] == 1, h])
        k = math.floor(args.miss_rate * len(scores))
        cuts[head] = float(scores[k])  # texts under the cut are cleared: at most k of these positives
        figures[head] = {"positives": len(scores), "positives_under_cut": int((scores < scores[k]).sum()),
                         "benign_under_cut": round(float((z[benign, h] < scores[k]).mean()), 3)}
    cut = np.array([cuts[h] for h in HEADS])
    categories_only = (z[:, :4] < cut[:4]).all(1)
    with_jailbreak = (z[:, :5] < cut[:5]).all(1)
    summary = {
        "slice_texts": len(cal_idx), "slice_benign": int(benign.sum()),
        "benign_cleared_categories": round(float(categories_only[benign].mean()), 3),
        "benign_cleared_categories_and_jailbreak": round(float(with_jailbreak[benign].mean()), 3),
        "per_head": figures,
    }
    print(json.dumps(summary, indent=1))
    from safetensors.numpy import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"weights": weights, "bias": bias.astype(np.float32)}, str(args.out / WEIGHTS_FILE))
    meta = {
        "features": FEATURES_VERSION, "heads": list(HEADS), "buckets": BUCKETS, "window": WINDOW, "cuts": cuts,
        "rule": {"miss_rate": args.miss_rate,
                 "positives": "slice texts labelled in the head (a category at medium or above) that the shipped "
                              "MiniLM also flags (at medium or above)",
                 "slice": "train.py's 15% calibration slice (split by group, seed fixed)"},
        "training": {"texts": len(train_idx), "epochs": args.epochs, "lr": LR, "bias_lr": BIAS_LR,
                     "l2_window": L2_WINDOW, "seed": SEED},
        "slice": summary,
    }
    (args.out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out / WEIGHTS_FILE} and {META_FILE}")


if __name__ == "__main__":
    main()
