"""Rebuild the shipped safety classifier: `python -m modelport.safety.train`.

Reproducible (fixed seeds, one thread count, deterministic data order). Steps:
1. read data/train.jsonl (never data/eval.jsonl: the evaluation set is only read by evaluate.py);
2. split off 15% of the training data as a calibration slice;
3. run the frozen bottom of the bundled MiniLM once per text and cache its hidden states;
4. fine-tune the top layers + output layer on the rest (binary cross-entropy on the ordinal
   severity outputs and the jailbreak/profanity outputs);
5. per output, pick the lowest decision threshold whose false-positive rate on the
   calibration slice is at most CALIBRATION_FPR (never tuned on the evaluation set);
6. write model/minilm_safety.safetensors (tuned layers fp16 + output layer) and
   model/minilm_safety.json (thresholds, base model sha256, training summary).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelport.safety.model import (
    CATEGORIES,
    MAX_TOKENS,
    META_FILE,
    MODEL_DIR,
    OUTPUTS,
    SEVERITIES,
    TUNED_LAYERS,
    WEIGHTS_FILE,
    base_model_dir,
    head_state_for_shipping,
    load_base,
)

DATA = Path(__file__).parent / "data" / "train.jsonl"
SEED = 20240611
CALIBRATION_FPR = 0.01
THRESHOLD_GRID = [round(x, 2) for x in np.arange(0.30, 0.96, 0.05)]


def targets(item: dict) -> list[float]:
    """Ordinal targets per category (>=low, >=medium, >=high), then jailbreak, profanity."""
    out = []
    for cat in CATEGORIES:
        level = SEVERITIES.index(item["labels"].get(cat, "safe"))
        out += [float(level >= k) for k in (1, 2, 3)]
    return [*out, float(item["jailbreak"]), float(item["profanity"])]


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


@torch.inference_mode()
def predict(head, states: list[torch.Tensor], batch: int = 64) -> np.ndarray:
    head.eval()
    outs = []
    for start in range(0, len(states), batch):
        hidden, mask = collate(states[start : start + batch])
        outs.append(torch.sigmoid(head(hidden, mask)).numpy())
    return np.concatenate(outs)


def calibrate(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Per output, the lowest threshold whose false-positive rate on the calibration slice is at
    most CALIBRATION_FPR. Negatives of a severity output are the texts without that category at
    all (a `low` text scored as `medium` is a severity error, not a false positive: counting it
    as one pushed the self_harm>=medium threshold to 0.85 in the first calibration)."""
    thresholds = {}
    for j, name in enumerate(OUTPUTS):
        if ">=" in name:
            any_level = OUTPUTS.index(name.split(">=")[0] + ">=low")
            neg = probs[y[:, any_level] == 0, j]
        else:
            neg = probs[y[:, j] == 0, j]
        chosen = THRESHOLD_GRID[-1]
        for t in THRESHOLD_GRID:
            if neg.size == 0 or float((neg >= t).mean()) <= CALIBRATION_FPR:
                chosen = t
                break
        thresholds[name] = float(max(chosen, 0.5)) if neg.size == 0 else float(chosen)
    return thresholds


def recalibrate(items: list[dict], cal_idx: list[int], y: np.ndarray, out: Path) -> None:
    """Recompute the thresholds of the shipped weights on the same calibration slice."""
    from modelport.safety.model import load_shipped

    model = load_shipped(out)
    cal_texts = [items[i]["text"] for i in cal_idx]
    states = encode_bottom(model.tokenizer, model.bottom, cal_texts)
    thresholds = calibrate(predict(model.head, states), y[cal_idx])
    meta_path = out / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["thresholds"] = thresholds
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print("thresholds:", thresholds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--calibrate-only", action="store_true",
                        help="keep the shipped weights, recompute only the thresholds on the calibration slice")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)

    items = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(SEED)  # noqa: S311 (data order, not crypto)
    order = list(range(len(items)))
    rng.shuffle(order)
    n_cal = int(0.15 * len(items))
    cal_idx, train_idx = order[:n_cal], order[n_cal:]

    y = np.array([targets(it) for it in items], dtype=np.float32)
    if args.calibrate_only:
        recalibrate(items, cal_idx, y, args.out)
        return
    tokenizer, bottom, head = load_base()
    t0 = time.perf_counter()
    states = encode_bottom(tokenizer, bottom, [it["text"] for it in items])
    print(f"cached bottom states for {len(items)} texts in {time.perf_counter() - t0:.0f}s")

    pos = y[train_idx].sum(0)
    pos_weight = torch.tensor(np.clip((len(train_idx) - pos) / np.maximum(pos, 1), 1.0, 8.0) ** 0.5)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.AdamW(
        [
            {"params": head.layers.parameters(), "lr": 8e-5},
            {"params": head.out.parameters(), "lr": 2e-3},
        ],
        weight_decay=0.01,
    )
    batch = 32
    steps = args.epochs * ((len(train_idx) + batch - 1) // batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[8e-5, 2e-3], total_steps=steps,
                                                    pct_start=0.1)
    for epoch in range(args.epochs):
        head.train()
        rng.shuffle(train_idx)
        total = 0.0
        t0 = time.perf_counter()
        for start in range(0, len(train_idx), batch):
            idx = train_idx[start : start + batch]
            hidden, mask = collate([states[i] for i in idx])
            loss = loss_fn(head(hidden, mask), torch.from_numpy(y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(train_idx):.4f} ({time.perf_counter() - t0:.0f}s)")

    # calibrate what is shipped: the tuned layers rounded to float16
    head.load_state_dict({k: v.float() for k, v in head_state_for_shipping(head).items()})
    probs = predict(head, [states[i] for i in cal_idx])
    thresholds = calibrate(probs, y[cal_idx])
    print("thresholds:", thresholds)

    from safetensors.torch import save_file

    from modelport.catalog.scanning import sha256_file

    args.out.mkdir(parents=True, exist_ok=True)
    save_file(head_state_for_shipping(head), str(args.out / WEIGHTS_FILE))
    meta = {
        "base": "all-MiniLM-L6-v2",
        "base_sha256": sha256_file(base_model_dir() / "model.safetensors"),
        "tuned_layers": TUNED_LAYERS,
        "max_tokens": MAX_TOKENS,
        "outputs": list(OUTPUTS),
        "thresholds": thresholds,
        "train_items": len(train_idx),
        "calibration_items": n_cal,
        "epochs": args.epochs,
        "seed": SEED,
    }
    (args.out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / WEIGHTS_FILE}")


if __name__ == "__main__":
    main()
