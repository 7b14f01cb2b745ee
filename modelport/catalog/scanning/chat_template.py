"""Rendering chat templates safely, and the scan's check that a model's template is harmless.

A chat template ships inside the model (GGUF `tokenizer.chat_template`, HF
`tokenizer_config.json`), so it is untrusted code that runs on every request. It renders in
jinja2's `ImmutableSandboxedEnvironment`, set up the way `transformers` sets up
`apply_chat_template` (trim_blocks, lstrip_blocks, loopcontrols, the `{% generation %}` tag,
`raise_exception`, `strftime_now`, a non-escaping `tojson`, a `dict`/`namespace` that refuse
dunder names), so real Hugging Face templates render the same here as there. On top of the
sandbox:

- touching an attribute the sandbox refuses raises at once (jinja's default silently renders it
  as empty, which would hide an escape attempt from the scan);
- simple resource bombs are refused: `range` has a per-render budget; `*`, `**`, `+`, `~` and
  `replace` refuse results beyond a size limit; filters refuse integer arguments (widths,
  counts) beyond it; format strings refuse huge field widths; the output is bounded too;
- every render has a step budget and a deadline: each loop iteration, call (macros included,
  so recursion too) and filter is a step, and each step checks the clock. Nothing else in the
  template language repeats, so a render (in the scan, or in a worker for every chat request)
  ends within about `RENDER_SECONDS` plus one bounded operation, whatever its input;
- the scan also inspects the template's syntax tree for underscore attributes, so an escape
  attempt hidden in a branch that the sample conversations do not reach is still reported.

Residual risk, accepted: straight-line code (no loop, call or filter between two operations)
is not stepped; its cost is bounded by the template's length times one operation on a value of
the size limit. Memory is bounded per value, not per render: a template can hold many values
of the size limit until the deadline. The scan therefore renders in a child process with CPU,
memory and time limits (`scanning/isolation.py`), which refuses such a template when the sample
conversations reach it; a worker should run under a memory limit of its own.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelport.catalog.scanning.report import Finding, quote_name
from modelport.errors import Unprocessable

#: Most items all `range()` calls of one render may produce together.
MAX_RANGE_ITEMS = 1_000_000
#: Longest string or list an operator may build, and longest rendered output, in characters.
MAX_VALUE_LEN = 4_000_000
#: Largest exponent `**` accepts.
MAX_EXPONENT = 1024
#: Most steps (loop iterations, calls, filters) one render may take.
MAX_RENDER_STEPS = 1_000_000
#: Longest one render may run, in seconds (checked at every step).
RENDER_SECONDS = 2.0


class RenderLimitExceeded(SecurityError):
    """The render ran past its step budget or its deadline; `limit` says which."""

    def __init__(self, limit: str) -> None:
        super().__init__(f"the template ran past its {limit}")
        self.limit = limit


class _RenderBudget:
    def __init__(self) -> None:
        self.range_items = MAX_RANGE_ITEMS
        self.steps = MAX_RENDER_STEPS
        self.deadline = time.monotonic() + RENDER_SECONDS


_budget: ContextVar[_RenderBudget | None] = ContextVar("chat_template_budget", default=None)


def _step() -> None:
    """One step of the current render: spend the budget, check the clock."""
    budget = _budget.get()
    if budget is None:
        return
    budget.steps -= 1
    if budget.steps < 0:
        raise RenderLimitExceeded(f"step budget of {MAX_RENDER_STEPS} steps")
    if time.monotonic() > budget.deadline:
        raise RenderLimitExceeded(f"time limit of {RENDER_SECONDS:g} s")


class _StrictUnsafeUndefined(jinja2.Undefined):
    """Undefined that raises SecurityError on any use when it stands for a refused attribute;
    an ordinary missing key or attribute still renders as empty, as HF templates rely on."""

    __slots__ = ()

    def _check(self) -> None:
        if self._undefined_exception is SecurityError:
            self._fail_with_undefined_error()

    def __str__(self) -> str:
        self._check()
        return super().__str__()

    def __bool__(self) -> bool:
        self._check()
        return super().__bool__()

    def __iter__(self):
        self._check()
        return super().__iter__()

    def __len__(self) -> int:
        self._check()
        return super().__len__()

    def __eq__(self, other: object) -> bool:
        self._check()
        return super().__eq__(other)

    __hash__ = jinja2.Undefined.__hash__


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` as transformers defines it: it marks assistant
    text for training masks; rendering just emits the body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


#: Marks the statement that the code generator turns into one step of the render budget (jinja
#: allows no custom node types; templates cannot write an environment attribute themselves).
_STEP_MARK = "modelport_render_step"


class _BoundedCodeGenerator(CodeGenerator):
    """Routes jinja's `~` concatenation through the environment so its size can be bounded,
    and makes every loop iteration a step of the render budget."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        stepped = copy.copy(node)
        mark = nodes.ExprStmt(nodes.EnvironmentAttribute(_STEP_MARK, lineno=node.lineno), lineno=node.lineno)
        stepped.body = [mark, *node.body]
        super().visit_For(stepped, frame)

    def visit_ExprStmt(self, node: nodes.ExprStmt, frame: Frame) -> None:
        if isinstance(node.node, nodes.EnvironmentAttribute) and node.node.name == _STEP_MARK:
            self.writeline("environment.step()", node)
            return
        super().visit_ExprStmt(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


#: A field width or precision of seven digits or more in a format string ("%9999999s", "{:>9999999}").
_HUGE_WIDTH = re.compile(r"\d{7,}")


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 0


class _ChatTemplateEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for seq, n in ((left, right), (right, left)):
                if _sized(seq) and isinstance(n, int) and _sized(seq) * n > MAX_VALUE_LEN:
                    raise SecurityError("the template builds a value beyond the size limit")
        elif op == "+":
            if _sized(left) + _sized(right) > MAX_VALUE_LEN:
                raise SecurityError("the template builds a value beyond the size limit")
        elif op == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError("the template raises a number to a power beyond the limit")
        return super().call_binop(context, op, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None and _HUGE_WIDTH.search(str(value.__self__)):
            raise SecurityError("the template formats with a field width beyond the limit")
        return wrapped

    def step(self) -> None:
        _step()

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        return super().call(__context, __obj, *args, **kwargs)

    def bounded_concat(self, parts: Iterable[Any]) -> str:
        strings = [str(p) for p in parts]
        if sum(map(len, strings)) > MAX_VALUE_LEN:
            raise SecurityError("the template builds a value beyond the size limit")
        return "".join(strings)


def _budget_range(*args: int) -> range:
    rng = range(*args)
    budget = _budget.get()
    if budget is not None:
        budget.range_items -= len(rng)
        if budget.range_items < 0:
            raise SecurityError("the template iterates beyond the range budget")
    return rng


def _raise_exception(message: Any) -> None:
    raise TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # transformers overrides jinja's tojson, which HTML-escapes <, >, & and '; templates expect JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` for templates, without exposing the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names, as transformers' does."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # jinja's own signature trick: `self` may be a key
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError("templates cannot store underscore names on a namespace")


def _bounded_filter(func: Any) -> Any:
    """Wrap a builtin filter so it is a step of the render and refuses integer arguments
    (widths, counts) beyond the limit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _step()
        for a in (*args, *kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_VALUE_LEN:
                raise SecurityError("a filter argument is beyond the size limit")
        return func(*args, **kwargs)

    return wrapper


def _replace(s: Any, old: Any, new: Any, count: int | None = None) -> str:
    s, old, new = str(s), str(old), str(new)
    n = s.count(old) if old else len(s) + 1
    if count is not None and count >= 0:
        n = min(n, count)
    if len(s) + n * (len(new) - len(old)) > MAX_VALUE_LEN:
        raise SecurityError("the template builds a value beyond the size limit")
    return s.replace(old, new, -1 if count is None else count)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    if _HUGE_WIDTH.search(str(value)):
        raise SecurityError("the template formats with a field width beyond the limit")
    return jinja2.filters.do_format(value, *args, **kwargs)


def _make_env() -> _ChatTemplateEnvironment:
    env = _ChatTemplateEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
        undefined=_StrictUnsafeUndefined,
        autoescape=False,
    )
    env.filters.update(tojson=_tojson, replace=_replace, format=_format)
    # functools.wraps keeps jinja's pass_context/pass_environment marks, so every filter can be wrapped.
    env.filters.update({name: _bounded_filter(func) for name, func in env.filters.items()})
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_TemplateDict(),
        namespace=_TemplateNamespace,
        range=_budget_range,
    )
    return env


_ENV = _make_env()
_TOO_DEEP = "the chat template is nested too deeply to compile"


@lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    return _ENV.from_string(template)


def _plain(value: Any) -> Any:
    """Rebuild the messages out of plain JSON types, so the template sees no object whose
    methods the sandbox does not know (as transformers does)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return "<unsupported value>"


def render_chat_template(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict] | None = None,
) -> str:
    """Render `messages` with a model's chat template in the sandbox.

    Raises Unprocessable when the template has a syntax error, refuses the conversation
    (`raise_exception`), fails while rendering, or breaks a sandbox rule. The message names
    the reason and, for syntax errors, the line; it never repeats message content or the text a
    template passed to `raise_exception` (which may quote the conversation).
    `details["reason"]` is one of "syntax", "refused", "security", "limits" (the step budget or
    the deadline), "render".
    """
    try:
        compiled = _compile(template)
    except TemplateSyntaxError as exc:
        raise Unprocessable(
            f"the chat template has a syntax error at line {exc.lineno}", details={"reason": "syntax"}
        ) from exc
    except RecursionError as exc:
        raise Unprocessable(_TOO_DEEP, details={"reason": "syntax"}) from exc
    context = {
        "messages": _plain(messages),
        "add_generation_prompt": bool(add_generation_prompt),
        "bos_token": str(bos_token),
        "eos_token": str(eos_token),
    }
    if tools is not None:
        context["tools"] = _plain(tools)
    token = _budget.set(_RenderBudget())
    try:
        out: list[str] = []
        size = 0
        for chunk in compiled.generate(**context):
            size += len(chunk)
            if size > MAX_VALUE_LEN:
                raise SecurityError("the rendered prompt exceeds the size limit")
            out.append(chunk)
        return "".join(out)
    except RenderLimitExceeded as exc:
        raise Unprocessable(
            f"the chat template ran past its {exc.limit}", details={"reason": "limits", "limit": exc.limit}
        ) from exc
    except SecurityError as exc:
        raise Unprocessable(
            "the chat template tried something the sandbox forbids (private attributes or resource limits)",
            details={"reason": "security"},
        ) from exc
    except TemplateError as exc:
        if type(exc) is TemplateError:  # exactly what raise_exception raises
            raise Unprocessable(
                "the chat template refused these messages", details={"reason": "refused"}
            ) from exc
        raise Unprocessable(
            f"the chat template failed to render ({type(exc).__name__})", details={"reason": "render"}
        ) from exc
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise Unprocessable(
            f"the chat template failed to render ({type(exc).__name__})", details={"reason": "render"}
        ) from exc
    finally:
        _budget.reset(token)


def _private_accesses(tree: nodes.Template) -> set[str]:
    """Names of underscore attributes the template reads: `x._y`, `x['_y']`, `x|attr('_y')`."""
    found: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            arg = node.args[0]
            name = arg.value if isinstance(arg, nodes.Const) else "<computed name>"
        if isinstance(name, str) and (name.startswith("_") or name == "<computed name>"):
            found.add(name)
    return found


#: Sample conversations the scan renders; a template must accept at least one (some refuse a
#: system turn, some require one).
_SAMPLES: tuple[list[dict[str, str]], ...] = (
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "What is two plus two?"},
    ],
    [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "What is two plus two?"},
    ],
    [{"role": "user", "content": "Hello."}],
)


def check_chat_template(
    template: str, file: str, key: str, *, bos_token: str = "", eos_token: str = ""
) -> list[Finding]:
    """The scan's verdict on one chat template: [] when it renders a sample conversation and
    touches no private attribute; otherwise one finding (security or structure)."""
    where = f"chat template {quote_name(key)}"
    try:
        private = _private_accesses(_ENV.parse(template))
    except TemplateSyntaxError as exc:
        return [
            Finding(
                file, "chat_template.syntax", "structure", f"{where} has a syntax error at line {exc.lineno}"
            )
        ]
    except RecursionError:
        return [Finding(file, "chat_template.syntax", "structure", f"{where}: {_TOO_DEEP}")]
    if private:
        names = ", ".join(quote_name(n) for n in sorted(private)[:5])
        return [
            Finding(
                file,
                "chat_template.sandbox",
                "security",
                f"{where} reaches for private attributes ({names}), a sandbox escape attempt",
            )
        ]
    reasons = []
    for sample in _SAMPLES:
        try:
            render_chat_template(template, sample, bos_token=bos_token, eos_token=eos_token)
            return []
        except Unprocessable as exc:
            reason = exc.details.get("reason")
            if reason == "limits":
                return [limit_finding(file, key, exc.details["limit"])]
            if reason == "security":
                return [
                    Finding(
                        file,
                        "chat_template.sandbox",
                        "security",
                        f"{where} broke a sandbox rule (private attributes or resource limits)",
                    )
                ]
            reasons.append(exc.message)
    return [
        Finding(
            file,
            "chat_template.render",
            "structure",
            f"{where} renders none of the sample conversations: {reasons[0]}",
        )
    ]


def limit_finding(file: str, key: str, what: str) -> Finding:
    """The finding for a template that ran past a limit of the scan (steps, time, CPU, memory)."""
    return Finding(
        file,
        "chat_template.limits",
        "security",
        f"chat template {quote_name(key)} was stopped by the scan's limits ({what}); a template that "
        "exhausts resources is refused",
    )
