"""Refit the shipped classifier's jailbreak output alone: `python -m tools.safety.refit_jailbreak`.

Why (issue 15): the shipped model (round 3) flags benign developer prompts as jailbreaks (ids,
hashes, URLs, code, format instructions: 23% of the independent robustness set), and its
threshold sits at the bottom of the grid because its calibration slice holds no such text.
Retraining the whole model for that (round 4) moved every category too, some for the worse.
The jailbreak output is one row of the output layer over the pooled features; refitting that
row leaves the tuned layers and every other output as they are (the int8 graph quantizes the
output layer per output channel: the category scores stay bit for bit, checked below).

Steps:
1. the training items (`train.jsonl`, screening forms) split as train.py splits them, and
   benign developer text from real files (tools/safety/dev_text.py: nobody here wrote it),
   split by source file;
2. the pooled features of the shipped layers (float32) for the fitting side;
3. the row refitted from its shipped values: weighted logistic loss (positives weighted as
   train.py does, label smoothing 0.05) plus an L2 pull towards the shipped row, full-batch L-BFGS;
4. the new row written into a staged copy of the weights; the jailbreak threshold calibrated through
   the production path (int8 graph, token windows) on the held-out sides: the lowest grid
   threshold that flags at most JAILBREAK_FPR of the slice's texts without the flag and at most
   JAILBREAK_FPR of the held-out developer texts;
5. before/after figures printed: held-out jailbreak recall and both false-positive rates, and
   the largest change of any other output's score (must be 0); only then are the staged files
   copied into `--out` (the shipped model by default): a failed check leaves it as it was.
Never reads an evaluation set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modelport.safety.classifier import MAX_TOKENS, META_FILE, MODEL_DIR, OUTPUTS, WEIGHTS_FILE, load_shipped
from modelport.safety.text import screening_form
from tools.safety import dev_text
from tools.safety.train import (
    JAILBREAK_FPR,
    LABEL_SMOOTHING,
    SEED,
    THRESHOLD_GRID,
    load_items,
    production_scores,
    split_by_group,
)

JB = OUTPUTS.index("jailbreak")
#: how strongly the refitted row is pulled towards the shipped one (per feature, squared)
PULL = 1e-3


@torch.inference_mode()
def pooled_features(model, texts: list[str], batch: int = 64) -> torch.Tensor:
    """The [mean, max] pooled states the output layer reads, one row per text (float32)."""
    head = model.head.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), head.out.in_features)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        enc = model.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_TOKENS,
                              return_tensors="pt")
        hidden = model.bottom(enc["input_ids"], enc["attention_mask"])
        seen: list[torch.Tensor] = []
        hook = head.out.register_forward_pre_hook(lambda _module, inputs, seen=seen: seen.append(inputs[0]))
        try:
            head(hidden, enc["attention_mask"])  # the served forward pass; the hook keeps what `out` reads
        finally:
            hook.remove()
        out[idx] = seen[0]
    return out


def fit_row(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The jailbreak row refitted from (w0, b0)."""
    pos = float(y.sum())
    pos_weight = torch.tensor(float(np.clip((len(y) - pos) / max(pos, 1.0), 1.0, 8.0) ** 0.5))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    target = y * (1 - LABEL_SMOOTHING) + LABEL_SMOOTHING / 2
    x = x.clone()  # out of inference mode: autograd needs a normal tensor
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(x @ w + b, target) + PULL * ((w - w0) ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


def lowest_threshold(negatives: list[np.ndarray]) -> float:
    """The lowest grid threshold flagging at most JAILBREAK_FPR of every negative group."""
    for t in THRESHOLD_GRID:
        if all(float((s >= t).mean()) <= JAILBREAK_FPR for s in negatives if s.size):
            return float(t)
    return float(THRESHOLD_GRID[-1])


def figures(scores: np.ndarray, is_jb: np.ndarray, dev: np.ndarray, t: float) -> dict:
    return {"threshold": t, "slice_recall": round(float((scores[is_jb] >= t).mean()), 3),
            "slice_fpr": round(float((scores[~is_jb] >= t).mean()), 4),
            "dev_fpr": round(float((dev >= t).mean()), 4), "slice_positives": int(is_jb.sum()),
            "slice_negatives": int((~is_jb).sum()), "dev_texts": int(dev.size)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--from", dest="source", type=Path, default=MODEL_DIR,
                        help="the model whose jailbreak row is refitted (default: the shipped one, which since "
                             "2026-12-05 is itself a refit; round 3's files reproduce it: `git show c31726d:<file>`)")
    parser.add_argument("--out", type=Path, default=MODEL_DIR, help="where the refitted model is written")
    parser.add_argument("--dev-texts", type=int, default=6000)
    parser.add_argument("--features-cache", type=Path, default=None,
                        help="a file to keep the pooled features in between runs on the same texts")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)

    items = load_items()
    cal_idx, train_idx = split_by_group(items, 0.15, random.Random(SEED))  # noqa: S311 (train.py's split)
    dev = dev_text.generate(args.dev_texts)
    for it in dev:
        it["text"] = screening_form(it["text"])
    dev_fit, dev_cal = dev_text.split(dev)
    dev_digest = hashlib.sha256("\0".join(it["text"] for it in dev).encode()).hexdigest()
    kinds = {k: sum(it["kind"] == k for it in dev) for k in dev_text.FRAMES}
    print(f"developer texts: {len(dev)} ({len(dev_fit)} to fit, {len(dev_cal)} held out), sha256 {dev_digest[:16]}, "
          f"kinds {kinds}")

    shipped = args.source
    with tempfile.TemporaryDirectory() as tmp:
        before_dir = Path(tmp) / "before"
        shutil.copytree(shipped, before_dir)
        cal_texts = [items[i]["text"] for i in cal_idx]
        is_jb = np.array([bool(items[i]["jailbreak"]) for i in cal_idx])
        t0 = time.perf_counter()
        before = production_scores(cal_texts + [it["text"] for it in dev_cal], before_dir)
        print(f"scored {len(before)} held-out texts with the shipped model ({time.perf_counter() - t0:.0f}s)")

        model = load_shipped(before_dir)
        fit_texts = [items[i]["text"] for i in train_idx] + [it["text"] for it in dev_fit]
        y = torch.tensor([float(items[i]["jailbreak"]) for i in train_idx] + [0.0] * len(dev_fit))
        t0 = time.perf_counter()
        key = hashlib.sha256("\0".join(fit_texts).encode()).hexdigest()
        cache = args.features_cache
        cached = torch.load(cache) if cache is not None and cache.is_file() else None
        if cached is not None and cached.get("key") == key:
            x = cached["x"]
        else:
            x = pooled_features(model, fit_texts).clone()
            if cache is not None:
                torch.save({"key": key, "x": x}, cache)
        print(f"pooled features of {len(fit_texts)} texts ({time.perf_counter() - t0:.0f}s)")
        w0, b0 = model.head.out.weight[JB].detach().clone(), model.head.out.bias[JB].detach().clone()
        w, b = fit_row(x, y, w0, b0)
        print(f"row moved by {float((w - w0).norm()):.3f} (norm {float(w0.norm()):.3f}), "
              f"bias {float(b0):.3f} -> {float(b):.3f}")

        from safetensors.torch import load_file, save_file

        state = load_file(str(before_dir / WEIGHTS_FILE))
        weight, bias = state["out.weight"].clone(), state["out.bias"].clone()
        weight[JB], bias[JB] = w.to(weight.dtype), b.to(bias.dtype)
        state["out.weight"], state["out.bias"] = weight.contiguous(), bias.contiguous()
        # staged first: `--out` (the shipped model by default) changes only once every check passed
        staged = Path(tmp) / "after"
        shutil.copytree(before_dir, staged)
        save_file(state, str(staged / WEIGHTS_FILE))
        after = production_scores(cal_texts + [it["text"] for it in dev_cal], staged)

        n = len(cal_texts)
        others = [j for j in range(len(OUTPUTS)) if j != JB]
        drift = float(np.abs(after[:, others] - before[:, others]).max())
        meta = json.loads((staged / META_FILE).read_text(encoding="utf-8"))
        old_t = meta["thresholds"]["jailbreak"]
        new_t = lowest_threshold([after[:n, JB][~is_jb], after[n:, JB]])
        report = {
            "before": figures(before[:n, JB], is_jb, before[n:, JB], old_t),
            "after": figures(after[:n, JB], is_jb, after[n:, JB], new_t),
            "other_outputs_max_change": drift,
        }
        print(json.dumps(report, indent=2))
        if drift != 0.0:
            raise SystemExit(f"another output's score changed by {drift}: the refit must touch the jailbreak row "
                             f"only; {args.out} is left as it was")
        meta["thresholds"]["jailbreak"] = new_t
        meta["jailbreak_refit"] = {
            "what": "the jailbreak row of the output layer refitted alone (tools/safety/refit_jailbreak.py)",
            "fit_texts": len(fit_texts), "developer_texts": len(dev), "developer_texts_sha256": dev_digest,
            "developer_kinds": kinds, "pull": PULL, "rule": f"<= {JAILBREAK_FPR} of the slice's texts without the "
            "flag and of the held-out developer texts", "held_out": report["after"], "shipped_before": report["before"],
        }
        (staged / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, args.out, dirs_exist_ok=True)
    print(f"wrote {args.out / WEIGHTS_FILE} and the jailbreak threshold {new_t} into {args.out / META_FILE}")


if __name__ == "__main__":
    main()
