"""The playground: chat with a deployment, streamed token by token into the page.

Nothing of the conversation is stored on the server (P1): the earlier turns travel back with
each message as form fields of the page, the answer streams through this process in memory
only, and it is never logged. The browser posts the form with htmx; the answer comes back as
server-sent events whose data are htmx partials (`<hx-partial>`), each appending one escaped
piece of text; the hx-sse extension swaps them in as they arrive. A prompt the content filter
blocks, and a stream it cuts, show the filter's annotation in the page.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup, escape

from modelport.api.responses import ClosingStreamingResponse
from modelport.api.routes.deployments import deployment_out
from modelport.errors import InvalidInput, ModelportError
from modelport.inference import calls, handlers
from modelport.inference.wire_errors import OPENAI
from modelport.offload import run_blocking
from modelport.portal.web import TEMPLATES, Me, PortalRoute, Svc, form, render
from modelport.safety.screening import ContentFiltered

router = APIRouter(route_class=PortalRoute, include_in_schema=False)
MAX_TURNS = 50


@router.get("/playground")
async def playground(request: Request, me: Me, svc: Svc, deployment: str | None = None) -> HTMLResponse:
    me.require("deployments.call")
    rows = await run_blocking(svc.deployments.list, me)
    chats = [deployment_out(d, m, svc.settings) for d, m in rows if m.task == "chat-completion"]
    return render(request, "playground.html", deployments=chats, selected=deployment)


def _number(value: str | None, field: str, lo: float, hi: float, default: float) -> float:
    if not value:
        return default
    try:
        v = float(value)
    except ValueError:
        raise InvalidInput(f"{field} must be a number.", field=field) from None
    if not lo <= v <= hi:
        raise InvalidInput(f"{field} must be between {lo:g} and {hi:g}.", field=field)
    return v


def _partial(target: str, swap: str, html: str) -> bytes:
    frag = f'<hx-partial hx-target="{target}" hx-swap="{swap}">{html}</hx-partial>'
    return b"data: " + frag.replace("\r", "").replace("\n", "&#10;").encode() + b"\n\n"


def _filter_note(results: dict[str, Any], what: str) -> str:
    hits = [f"{escape(k)} ({escape(v.get('severity', 'detected'))})" for k, v in sorted(results.items())
            if isinstance(v, dict) and v.get("filtered")]
    return TEMPLATES.get_template("_filter_note.html").render(what=what, hits=hits)


@router.post("/playground/chat")
async def chat(request: Request, me: Me, svc: Svc) -> Response:
    me.require("deployments.call")
    data = await form(request)
    name = data.get("deployment") or ""
    message = (data.get("message") or "").strip()
    if not message:
        raise InvalidInput("Write a message first.", field="message")
    roles, contents = data.getlist("history_role"), data.getlist("history_content")
    if len(roles) != len(contents) or len(roles) > 2 * MAX_TURNS or any(r not in ("user", "assistant")
                                                                          for r in roles):
        raise InvalidInput("The conversation in the page is not valid; reload the playground.", field="history")
    messages = []
    if (system := (data.get("system") or "").strip()):
        messages.append({"role": "system", "content": system})
    messages += [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]
    messages.append({"role": "user", "content": message})
    body = {"model": name, "messages": messages, "stream": True,
            "temperature": _number(data.get("temperature"), "temperature", 0, 2, 0.7),
            "max_tokens": int(_number(data.get("max_tokens"), "max_tokens", 1, 4096, 256))}

    gateway = svc.gateway
    route = calls.resolve(gateway, calls.Caller(workspace_id=me.workspace_id), name)
    calls.check_client(route, request)
    calls.check_ready(route)
    turn = "a-" + secrets.token_hex(6)
    turn_html = TEMPLATES.get_template("_turn.html")
    try:
        upstream = await handlers.chat(request, gateway, route, body, error_shape=OPENAI)
    except ContentFiltered as exc:
        note = Markup(_filter_note(exc.details.get("content_filter_result", {}), "prompt"))  # noqa: S704 - rendered
        html = turn_html.render(message=message, turn=turn, note=note)
        return HTMLResponse(f'<hx-partial hx-target="#conversation" hx-swap="beforeend">{html}</hx-partial>')
    opening = turn_html.render(message=message, turn=turn)
    return ClosingStreamingResponse(_relay(upstream, opening, turn, message), media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _relay(upstream: Response, opening: str, turn: str, message: str) -> AsyncIterator[bytes]:
    """OpenAI stream chunks in, htmx partials out; the answer is kept in memory only, to hand it
    back to the page as the next request's history."""
    inner = upstream.body_iterator  # type: ignore[attr-defined]  # handlers.chat streams here
    answer: list[str] = []
    yield _partial("#conversation", "beforeend", opening)
    try:
        async for raw in inner:
            for line in (raw if isinstance(raw, bytes) else raw.encode()).split(b"\n"):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                event = orjson.loads(line[6:])
                if "error" in event:
                    msg = escape(event["error"].get("message", "The model failed."))
                    yield _partial(f"#{turn}", "afterend", f'<p class="alert error">{msg}</p>')
                    continue
                for choice in event.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        answer.append(text)
                        yield _partial(f"#{turn}", "beforeend", str(escape(text)))
                    if choice.get("finish_reason") == "content_filter":
                        note = _filter_note(choice.get("content_filter_results") or {}, "answer")
                        yield _partial(f"#{turn}", "afterend", note)
    except ModelportError as exc:
        yield _partial(f"#{turn}", "afterend", f'<p class="alert error">{escape(exc.message)}</p>')
    finally:
        close = getattr(inner, "aclose", None)
        if close is not None:
            await close()
    history = TEMPLATES.get_template("_history.html").render(message=message, answer="".join(answer))
    yield _partial("#history", "beforeend", history)
    yield b"event: done\ndata: end\n\n"
