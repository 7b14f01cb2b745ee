"""Routes: standalone screening for operators, and workspace blocklists."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict, Field

from modelport.api.deps import Caller, Svc
from modelport.safety.blocklists import MAX_PATTERN_CHARS, MAX_TERM_CHARS
from modelport.safety.config import BLOCKLIST_NAME, ContentFilterConfig
from modelport.safety.service import MAX_PATTERNS, MAX_TERMS

router = APIRouter(prefix="/api/v1/safety")

BlocklistName = Annotated[str, Path(pattern=BLOCKLIST_NAME, description="1-64 letters, digits, '_', '.', '-'.")]


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=100_000, description="The text to screen; it is not stored.")
    config: ContentFilterConfig | None = Field(default=None, description="Thresholds to apply (default: medium).")


class AnalyzeOut(BaseModel):
    filtered: bool
    content_filter_results: dict


class BlocklistPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Bounded here too, so an oversized list or entry is refused before any work (422).
    terms: list[Annotated[str, Field(max_length=MAX_TERM_CHARS)]] = Field(
        default_factory=list, max_length=MAX_TERMS, description="Exact terms, matched case-insensitively as words.")
    patterns: list[Annotated[str, Field(min_length=1, max_length=MAX_PATTERN_CHARS)]] = Field(
        default_factory=list, max_length=MAX_PATTERNS, description="Regular expressions.")


class BlocklistOut(BaseModel):
    name: str
    terms: list[str]
    patterns: list[str]
    updated_at: datetime


@router.post("/analyze", response_model=AnalyzeOut, name="safety.analyze")
async def analyze(body: AnalyzeRequest, caller: Caller, svc: Svc) -> AnalyzeOut:
    verdict = await svc.safety.analyze(caller, body.text, body.config)
    return AnalyzeOut(filtered=verdict.filtered, content_filter_results=verdict.results)


@router.get("/blocklists", response_model=list[BlocklistOut], name="safety.blocklist.list")
def list_blocklists(caller: Caller, svc: Svc) -> list[BlocklistOut]:
    return [BlocklistOut(name=b.name, terms=b.terms, patterns=b.patterns, updated_at=b.updated_at)
            for b in svc.safety.list_blocklists(caller)]


@router.put("/blocklists/{name}", response_model=BlocklistOut, name="safety.blocklist.put")
def put_blocklist(name: BlocklistName, body: BlocklistPut, caller: Caller, svc: Svc) -> BlocklistOut:
    b = svc.safety.put_blocklist(caller, name, body.terms, body.patterns)
    return BlocklistOut(name=b.name, terms=b.terms, patterns=b.patterns, updated_at=b.updated_at)


@router.delete("/blocklists/{name}", status_code=status.HTTP_204_NO_CONTENT, name="safety.blocklist.delete")
def delete_blocklist(name: str, caller: Caller, svc: Svc) -> None:
    svc.safety.delete_blocklist(caller, name)
