"""Wire schemas of the catalog routes (control plane)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from modelport.schema_types import JsonInt

Task = Literal["chat-completion", "embeddings"]
Format = Literal["gguf", "safetensors"]
DeploymentType = Literal["dedicated", "serverless"]
DEPLOYMENT_TYPES: tuple[DeploymentType, ...] = ("dedicated", "serverless")
#: Applied by the schema and again by the catalog service (a model can also come from a package).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
SPDX_PATTERN = r"^[A-Za-z0-9.+-]{1,64}$"


class UploadFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=300, description="Relative file name inside the model.")
    size: JsonInt = Field(ge=0, description="Exact size in bytes.")


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, pattern=MODEL_NAME_PATTERN,
                      description="1-100 letters, digits, '.', '_' or '-', starting with a letter or digit.")
    version: str = Field(default="1", min_length=1, max_length=64, pattern=VERSION_PATTERN,
                         description="1-64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit.")
    format: Format
    task: Task | None = Field(default=None, description="Read from the files when omitted.")
    scope: Literal["workspace", "catalog"] = Field(
        default="workspace", description="`catalog` (platform admin) or private to your workspace."
    )
    publisher: str | None = Field(default=None, max_length=100)
    license: str = Field(default="NOASSERTION", max_length=64, pattern=SPDX_PATTERN, description="SPDX licence id.")
    license_url: str | None = Field(default=None, max_length=500)
    card: str = Field(default="", max_length=200_000, description="Model card, markdown.")
    downloadable: bool = Field(default=False, strict=True)
    finetunable: bool = Field(default=False, strict=True)
    deployment_types: list[DeploymentType] = Field(default_factory=lambda: list(DEPLOYMENT_TYPES))
    files: list[UploadFile] = Field(min_length=1, max_length=500)


class UploadOut(BaseModel):
    id: str
    name: str
    version: str
    files: list[UploadFile]
    received: list[str]
    expires_at: datetime


class ModelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    curated: bool | None = Field(default=None, strict=True)
    downloadable: bool | None = Field(default=None, strict=True)
    finetunable: bool | None = Field(default=None, strict=True)
    deprecated: bool | None = Field(default=None, strict=True)
    card: str | None = Field(default=None, max_length=200_000)
    deployment_types: list[DeploymentType] | None = None


class FileOut(BaseModel):
    path: str
    size: int
    sha256: str


class LicenseOut(BaseModel):
    spdx: str
    url: str | None


class ScanOut(BaseModel):
    status: Literal["passed", "failed"]
    scanned_at: datetime
    findings: list[dict]


class ModelOut(BaseModel):
    id: str
    name: str
    version: str
    publisher: str
    license: LicenseOut
    task: str
    format: str
    size_bytes: int
    files: list[FileOut]
    scan: ScanOut
    curated: bool
    downloadable: bool
    finetunable: bool
    deployment_types: list[str]
    owner: Literal["platform", "workspace"]
    source: str
    deprecated: bool
    metadata: dict
    offer: dict | None
    created_at: datetime


class ModelDetailOut(ModelOut):
    card: str
    scan_report: dict


class ModelPage(BaseModel):
    data: list[ModelOut]
    next_cursor: str | None
