"""CLI: content safety (screen a text, blocklists, a deployment's filter)."""

from __future__ import annotations

import json as jsonlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from modelport.cli.client import CliError
from modelport.cli.common import JsonOpt, client, handle_errors
from modelport.cli.output import console, print_json, table

safety = typer.Typer(help="Content safety: screening, blocklists, deployment filters.", no_args_is_help=True)
blocklists = typer.Typer(help="Custom blocklists of the workspace (owners).", no_args_is_help=True)
safety.add_typer(blocklists, name="blocklists")

CATS = ("hate", "sexual", "violence", "self_harm")


def _results_table(results: dict) -> None:
    rows = [{"category": c, "severity": results[c]["severity"], "filtered": results[c]["filtered"]} for c in CATS]
    rows += [{"category": k, "severity": "detected" if results[k].get("detected") else "-",
              "filtered": results[k]["filtered"]} for k in ("jailbreak", "profanity")]
    rows.append({"category": "custom_blocklists", "severity": ", ".join(
        d.get("id", "") for d in results["custom_blocklists"].get("details", [])) or "-",
        "filtered": results["custom_blocklists"]["filtered"]})
    table(rows, [("CATEGORY", "category"), ("SEVERITY", "severity"), ("FILTERED", "filtered")])


@safety.command("check")
@handle_errors
def check(ctx: typer.Context,
          file: Annotated[Path | None, typer.Argument(help="Read the text from this file (default: stdin).",
                                                      exists=True, dir_okay=False, readable=True)] = None,
          threshold: Annotated[str, typer.Option(help="low | medium | high, for every category.")] = "medium",
          json: JsonOpt = False) -> None:
    """Screen a text as a deployment's filter would. The text is read from stdin or a file,
    never from the command line (it would land in shell history and process lists)."""
    text = file.read_text(encoding="utf-8") if file else sys.stdin.read()
    if not text.strip():
        raise CliError("No text: pipe it on stdin or name a file.")
    cfg = {c: {"prompt_threshold": threshold, "completion_threshold": threshold} for c in CATS}
    r = client(ctx).request("POST", "/api/v1/safety/analyze", json={"text": text, "config": cfg})
    if json:
        return print_json(r)
    _results_table(r["content_filter_results"])
    console.print("[red]filtered[/red]" if r["filtered"] else "[green]not filtered[/green]")


@safety.command("filter")
@handle_errors
def deployment_filter(ctx: typer.Context, deployment: str,
                      config: Annotated[Path | None, typer.Option(help="JSON file: the whole config.")] = None,
                      enabled: Annotated[bool | None, typer.Option("--enabled/--disabled")] = None,
                      threshold: Annotated[str | None, typer.Option(help="low | medium | high, every category")] = None,
                      mode: Annotated[str | None, typer.Option(help="block | annotate, every category")] = None,
                      streaming: Annotated[str | None, typer.Option(help="buffered | asynchronous")] = None,
                      blocklist: Annotated[list[str] | None, typer.Option(help="Apply this blocklist; repeat.")] = None,
                      backend: Annotated[str | None, typer.Option(help="minilm | hf-local | llm-judge")] = None,
                      judge: Annotated[str | None, typer.Option(
                          help="With --backend llm-judge: the chat deployment (same geography) that judges.")] = None,
                      json: JsonOpt = False) -> None:
    """Show or change a deployment's content filter (owners; applies to the next request)."""
    c = client(ctx)
    path = f"/api/v1/deployments/{deployment}/content-filter"
    current = c.request("GET", path)
    changed = config is not None or any(
        v is not None for v in (enabled, threshold, mode, streaming, blocklist, backend, judge))
    if config is not None:
        current = jsonlib.loads(config.read_text(encoding="utf-8"))
    if enabled is not None:
        current["enabled"] = enabled
    for cat in CATS:
        if threshold:
            current[cat]["prompt_threshold"] = current[cat]["completion_threshold"] = threshold
        if mode:
            current[cat]["mode"] = mode
    if streaming:
        current["streaming"] = streaming
    if blocklist is not None:
        current["blocklists"] = blocklist
    if backend is not None:
        current["backend"] = backend
        if backend != "llm-judge":
            current["judge_deployment"] = None
    if judge is not None:
        current["judge_deployment"] = judge
    if changed:
        current = c.request("PUT", path, json=current)
    if json:
        return print_json(current)
    judged = f" (judge: {current['judge_deployment']})" if current.get("judge_deployment") else ""
    console.print(f"Filter {'on' if current['enabled'] else 'off'}, backend {current['backend']}{judged}, "
                  f"streaming {current['streaming']}, blocklists: {', '.join(current['blocklists']) or 'none'}")
    table([{"category": cat, **current[cat]} for cat in CATS],
          [("CATEGORY", "category"), ("PROMPT", "prompt_threshold"), ("COMPLETION", "completion_threshold"),
           ("MODE", "mode")])


@safety.command("counts")
@handle_errors
def counts(ctx: typer.Context, deployment: str, json: JsonOpt = False) -> None:
    """How many requests a deployment's filter flagged, per category (counts only)."""
    rows = client(ctx).request("GET", f"/api/v1/deployments/{deployment}/content-filter/counts")
    if json:
        return print_json(rows)
    table(rows, [("DIRECTION", "direction"), ("CATEGORY", "category"), ("ACTION", "action"), ("COUNT", "count")])


@blocklists.command("list")
@handle_errors
def bl_list(ctx: typer.Context, json: JsonOpt = False) -> None:
    """List the workspace's custom blocklists."""
    rows = client(ctx).request("GET", "/api/v1/safety/blocklists")
    if json:
        return print_json(rows)
    table(rows, [("NAME", "name"), ("TERMS", lambda r: len(r["terms"])), ("PATTERNS", lambda r: len(r["patterns"])),
                 ("UPDATED", "updated_at")])


@blocklists.command("put")
@handle_errors
def bl_put(ctx: typer.Context, name: str,
           file: Annotated[Path, typer.Option(help='JSON file: {"terms": [...], "patterns": [...]}')],
           json: JsonOpt = False) -> None:
    """Create or replace a blocklist from a JSON file."""
    body = jsonlib.loads(file.read_text(encoding="utf-8"))
    b = client(ctx).request("PUT", f"/api/v1/safety/blocklists/{name}", json=body)
    if json:
        return print_json(b)
    console.print(f"Blocklist {b['name']}: {len(b['terms'])} terms, {len(b['patterns'])} patterns.")


@blocklists.command("delete")
@handle_errors
def bl_delete(ctx: typer.Context, name: str, json: JsonOpt = False) -> None:
    """Delete a custom blocklist of the current workspace (owners)."""
    client(ctx).request("DELETE", f"/api/v1/safety/blocklists/{name}")
    if json:
        return print_json({"deleted": name})
    console.print(f"Deleted blocklist {name}.")
