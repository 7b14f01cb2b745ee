"""Routes: usage and charges, and workspace budgets. Thin: parse, call, shape."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from modelport.api.deps import Caller, Svc
from modelport.metering.usage import to_csv
from modelport.offload import run_blocking

router = APIRouter(prefix="/api/v1")


class UsageRowOut(BaseModel):
    workspace: str | None = Field(description="With all_workspaces=true: the workspace's name.")
    group: str = Field(description="The deployment, model, offer or day the row sums.")
    currency: str | None = Field(description="The currency of the charges; null for models sold directly.")
    requests: int
    input_tokens: int
    output_tokens: int
    charges: Decimal


class UsageReport(BaseModel):
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    group_by: str
    rows: list[UsageRowOut]

    model_config = ConfigDict(populate_by_name=True)


class BudgetPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: str = Field(pattern=r"^[0-9]{1,12}(\.[0-9]{1,9})?$", description="Per calendar month (UTC), a decimal "
                                                                           "string such as '250.00'.")


class BudgetOut(BaseModel):
    currency: str
    amount: Decimal
    month: str
    spent: Decimal
    remaining: Decimal
    exhausted: bool
    updated_at: datetime


Currency = Annotated[str, Path(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. USD.")]


@router.get("/usage", response_model=UsageReport, response_model_by_alias=True, name="usage.read",
            responses={200: {"content": {"text/csv": {}}}})
async def read_usage(
    caller: Caller, svc: Svc,
    start: Annotated[datetime | None, Query(alias="from", description="Start (rounded down to its hour); "
                                                                      "default: the start of this month.")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="End, exclusive; default: now.")] = None,
    group_by: Literal["deployment", "model", "offer", "day"] = "deployment",
    format: Literal["json", "csv"] = "json",
    all_workspaces: bool = False,
) -> UsageReport | Response:
    from modelport.metering.usage import parse_range

    rows = await run_blocking(svc.usage.usage, caller, start, end, group_by, all_workspaces)
    if format == "csv":
        return Response(to_csv(rows, group_by, all_workspaces), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="usage.csv"'})
    lo, hi = parse_range(start, end)
    return UsageReport.model_validate({"from": lo, "to": hi, "group_by": group_by,
                                       "rows": [UsageRowOut(**r.as_dict()) for r in rows]})


@router.get("/budgets", response_model=list[BudgetOut], name="budget.list")
async def list_budgets(caller: Caller, svc: Svc) -> list[dict]:
    return await run_blocking(svc.budgets.list, caller)


@router.get("/budgets/{currency}", response_model=BudgetOut, name="budget.read")
async def get_budget(currency: Currency, caller: Caller, svc: Svc) -> dict:
    return await run_blocking(svc.budgets.show, caller, currency)


@router.put("/budgets/{currency}", response_model=BudgetOut, name="budget.set")
async def put_budget(currency: Currency, body: BudgetPut, caller: Caller, svc: Svc) -> dict:
    return await run_blocking(svc.budgets.put, caller, currency, body.amount)
