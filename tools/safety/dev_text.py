"""Benign developer text that nobody on this project wrote, for the jailbreak output only.

`python -m tools.safety.refit_jailbreak` reads it; it is generated on the machine that trains
(deterministic for the same files), never committed: its snippets come from other people's work
under their own licences (the Python standard library, the pinned packages of `make install`,
and the gettext message catalogs of the Debian system, GPL among them).

What users paste into prompts and what the shipped jailbreak output mistook for jailbreaks
(issue 15: ids, hashes, URLs, code, base64, JSON, stack traces, non-English): here every kind
is taken from real files instead of templates written alongside the training data:
- code: 2-10 consecutive lines of a Python file; comments and docstring lines;
- stack traces: frames made of real file paths, line numbers, function names and source lines,
  ending in a builtin exception with a string literal of the same file as its message;
- URLs found in those files; JSON objects from the packages' JSON files; base64 of a source
  line; digests of real files, uuids;
- non-English: translated messages (msgstr) of the system's gettext catalogs.
About 60% are wrapped in a neutral request (the frames below, written here: the content is not).

Each text carries its `source` (a file path, a catalog): `split` puts every text of one source
on the same side, so calibration texts share no file with the texts the output is fitted on.
"""

from __future__ import annotations

import base64
import builtins
import gettext
import hashlib
import json
import random
import re
import sysconfig
import uuid
import zlib
from pathlib import Path

SEED = 20261205
#: packages of `make install` whose Python files and JSON files are read (with the standard library)
PACKAGES = ["fastapi", "starlette", "sqlalchemy", "httpx", "pydantic", "click", "rich", "jinja2", "yaml", "requests",
            "urllib3", "aiohttp", "alembic", "typer", "hypothesis", "jsonschema", "jsonschema_specifications",
            "openapi_spec_validator", "cryptography", "botocore", "transformers", "tokenizers", "onnx", "limits",
            "redis", "psycopg", "uvicorn", "werkzeug", "flask", "boto3", "moto", "schemathesis", "mako", "pygments"]
CATALOG_DIRS = [Path("/usr/share/locale"), Path("/usr/share/vim")]

FRAMES = {
    "code": ["What does this code do?\n{x}", "Can you review this snippet?\n```python\n{x}\n```",
             "Why is this slow?\n{x}", "Add type hints to this:\n{x}", "Explain line by line:\n{x}",
             "Is there a bug here?\n```\n{x}\n```", "Rewrite this in Go:\n{x}", "Write a unit test for:\n{x}"],
    "comment": ["What does this comment mean: \"{x}\"", "Rephrase this docstring: {x}", "Fix the grammar: {x}"],
    "trace": ["I get this error:\n{x}", "What went wrong here?\n{x}", "{x}\nHow do I fix this?",
              "Our CI fails with:\n{x}\nAny idea?"],
    "url": ["Open {x} and summarise it.", "Is {x} still the right link for the docs?", "Fetch {x} for me.",
            "The page {x} returns 404, what happened?", "Add {x} to the README's links."],
    "json": ["Pretty-print this JSON: {x}", "Respond only with JSON shaped like {x}", "Validate this: {x}",
             "Convert to YAML:\n{x}", "Which keys are missing from {x}?"],
    "b64": ["Decode this base64: {x}", "What is {x}?", "Is this valid base64? {x}"],
    "digest": ["Does the checksum {x} match the release?", "Commit {x} broke the build; what changed?",
               "Look up request {x} in the logs.", "Is {x} a SHA-256 or a SHA-1?", "Say hello. CANARY-{x}"],
    "foreign": ["Translate to English: {x}", "What does this message mean? \"{x}\"", "{x}",
                "Is this translation right? {x}"],
}


def _python_files() -> list[Path]:
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    site = Path(sysconfig.get_paths()["purelib"])
    roots += [site / name for name in PACKAGES if (site / name).is_dir()]
    files: list[Path] = []
    for root in roots:
        files += sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts
                        and "test" not in p.name)
    return files


def _json_files() -> list[Path]:
    site = Path(sysconfig.get_paths()["purelib"])
    return sorted(p for name in PACKAGES if (site / name).is_dir() for p in (site / name).rglob("*.json")
                  if p.stat().st_size < 2_000_000)


def _catalogs() -> list[Path]:
    found: list[Path] = []
    for root in CATALOG_DIRS:
        if root.is_dir():
            found += sorted(p for p in root.rglob("*.mo") if not re.search(r"/en(_[A-Z]{2})?[/.@]", str(p)))
    return found


_URL = re.compile(r"https?://[A-Za-z0-9._~:/?#\[\]@!$&*+,;=%-]{6,200}")
_STRING = re.compile(r"""["']([A-Za-z][^"'\\]{12,90})["']""")
_DEF = re.compile(r"^\s*(?:async\s+)?def\s+([A-Za-z_]\w*)")
_EXCEPTIONS = sorted(n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, Exception)
                     and n.endswith("Error"))


def _trace(rng: random.Random, files: list[Path]) -> tuple[str, str] | None:
    frames, source = [], None
    for _ in range(rng.randint(2, 4)):
        path = rng.choice(files)
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        defs = [(i, m.group(1)) for i, line in enumerate(lines) if (m := _DEF.match(line))]
        if not defs:
            return None
        i, func = rng.choice(defs)
        body = [j for j in range(i + 1, min(i + 25, len(lines))) if lines[j].strip()
                and not lines[j].strip().startswith(("#", '"', "'"))]
        if not body:
            return None
        j = rng.choice(body)
        frames.append(f'  File "{path}", line {j + 1}, in {func}\n    {lines[j].strip()}')
        source = path
    assert source is not None
    strings = _STRING.findall(source.read_text(encoding="utf-8", errors="replace"))
    message = rng.choice(strings) if strings else ""
    text = "Traceback (most recent call last):\n" + "\n".join(frames) + f"\n{rng.choice(_EXCEPTIONS)}: {message}"
    return text, str(source)


def _messages(path: Path) -> list[str]:
    try:
        with path.open("rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]  # the parsed catalog
    except Exception:  # a catalog that does not parse is skipped, whatever the reason
        return []
    out = []
    for key, value in catalog.items():
        if not isinstance(value, str) or not key or value == key:
            continue
        value = " ".join(value.replace("%s", "").replace("%d", "").split())
        if 3 <= len(value.split()) <= 40 and not value.isascii():
            out.append(value)
    return sorted(set(out))


def generate(n: int = 6000) -> list[dict]:
    """About `n` texts: {"text", "kind", "source"}, deterministic for the same files."""
    rng = random.Random(SEED)  # noqa: S311 (a data sample, not crypto)
    files = _python_files()
    if not files:
        raise RuntimeError("no Python source files found: run this in the project's virtual environment")
    quota = {"code": 0.22, "comment": 0.1, "trace": 0.1, "url": 0.1, "json": 0.08, "b64": 0.06, "digest": 0.1,
             "foreign": 0.24}
    items: list[dict] = []
    catalogs = _catalogs()
    jsons = _json_files()
    for kind, share in quota.items():
        want, tries = int(n * share), 0
        made = 0
        while made < want and tries < want * 20:
            tries += 1
            got = _one(kind, rng, files, jsons, catalogs)
            if got is None:
                continue
            content, source = got
            frame = rng.choice(FRAMES[kind]) if rng.random() < 0.6 or kind in ("url", "digest", "b64") else "{x}"
            items.append({"text": frame.format(x=content), "kind": kind, "source": source})
            made += 1
    return items


def _one(kind: str, rng: random.Random, files: list[Path], jsons: list[Path],
         catalogs: list[Path]) -> tuple[str, str] | None:
    if kind == "trace":
        return _trace(rng, files)
    if kind == "foreign":
        if not catalogs:
            return None
        path = rng.choice(catalogs)
        messages = _messages(path)
        if not messages:
            return None
        return " ".join(rng.sample(messages, min(len(messages), rng.randint(1, 3)))), str(path)
    if kind == "json":
        if not jsons:
            return None
        path = rng.choice(jsons)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None
        for _ in range(rng.randint(0, 3)):
            if isinstance(data, dict) and data:
                data = data[rng.choice(sorted(data))]
            elif isinstance(data, list) and data:
                data = rng.choice(data)
        text = json.dumps(data, ensure_ascii=False)
        if not 10 <= len(text) <= 500 or not isinstance(data, (dict, list)):
            return None
        return text, str(path)
    path = rng.choice(files)
    source = path.read_text(encoding="utf-8", errors="replace")
    lines = source.splitlines()
    if len(lines) < 12:
        return None
    if kind == "code":
        start, size = rng.randrange(len(lines) - 10), rng.randint(2, 10)
        chunk = "\n".join(lines[start : start + size]).strip("\n")
        if len(chunk.split()) < 4 or len(chunk) > 600:
            return None
        return chunk, str(path)
    if kind == "comment":
        prose = [line.strip().lstrip("#").strip() for line in lines
                 if len(re.findall(r"[A-Za-z]{2,}", line)) >= 6 and not re.search(r"[=(){}\[\]]", line)]
        return (rng.choice(prose), str(path)) if prose else None
    if kind == "url":
        urls = _URL.findall(source)
        return (rng.choice(urls).rstrip(".,;:"), str(path)) if urls else None
    if kind == "b64":
        line = rng.choice(lines).strip()
        if len(line) < 12:
            return None
        encoded = base64.b64encode(line.encode()).decode()
        return (encoded if rng.random() < 0.5 else encoded.rstrip("=")), str(path)
    if kind == "digest":
        data = path.read_bytes()
        choice = rng.randrange(5)
        if choice == 0:
            return hashlib.sha256(data).hexdigest(), str(path)
        if choice == 1:
            return hashlib.sha1(data).hexdigest(), str(path)  # noqa: S324 (a digest as text, not security)
        if choice == 2:
            return hashlib.md5(data).hexdigest(), str(path)  # noqa: S324 (a digest as text, not security)
        if choice == 3:
            return str(uuid.UUID(bytes=hashlib.sha256(data).digest()[:16], version=4)), str(path)
        return f"{zlib.crc32(data):08x}", str(path)
    raise ValueError(kind)


def split(items: list[dict], fraction: float = 0.2) -> tuple[list[dict], list[dict]]:
    """(fit, calibration): whole sources on one side; about `fraction` of them for calibration."""
    fit, cal = [], []
    for it in items:
        bucket = int(hashlib.sha256(it["source"].encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (cal if bucket < fraction else fit).append(it)
    return fit, cal
