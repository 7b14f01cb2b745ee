"""Wire schemas of fine-tuning jobs (control plane). Numbers and ids only: never data."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from modelport.deployments.schemas import Isolation

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=100, description="Base model name (must be fine-tunable).")
    dataset: str = Field(min_length=1, max_length=64, description="Training dataset (name or id) of this workspace.")
    validation_dataset: str | None = Field(default=None, min_length=1, max_length=64)
    # Our extensions, OpenAI-shaped names where one exists.
    epochs: int = Field(default=3, ge=1, le=100)
    learning_rate_multiplier: float = Field(default=1.0, gt=0, le=100,
                                            description="Scales the base learning rate (1e-3 for LoRA).")
    batch_size: int = Field(default=4, ge=1, le=256)
    suffix: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,39}$",
                               description="Added to the fine-tuned model's name.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Fixed seeds make a job reproducible.")


class LossPoint(BaseModel):
    step: int
    train_loss: float
    validation_loss: float | None = None


class JobOut(BaseModel):
    id: str
    status: JobStatus
    model: str
    dataset: str
    validation_dataset: str | None
    hyperparameters: dict
    suffix: str | None
    step: int
    total_steps: int
    progress: float = Field(description="Fraction of steps done, 0..1.")
    eta_seconds: float | None
    trained_tokens: int
    losses: list[LossPoint]
    fine_tuned_model: str | None = Field(description="Name of the model this job registered.")
    error: str | None
    isolation: Isolation | None = Field(description="How the trainer was isolated; null before it started.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
