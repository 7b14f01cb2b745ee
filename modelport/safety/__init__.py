"""Content safety (issue 5): classify prompts and outputs, apply a deployment's content filter.

Public API, for the gateway and the control plane:
- `ContentFilterConfig` (config.py): a deployment's filter settings; `default_for("serverless")`.
- `BlocklistSet`, `Blocklist` (blocklists.py): a workspace's custom blocklists.
- `create_backend(name, **options)` (backends/): the registered backends, `minilm` by default.
- `Screener(backend, config, blocklists)` (screening.py): `await screen_prompt(text)`,
  `stream()` -> StreamScreener; `error_body(verdict)`, `empty_results()`;
  failures raise `SafetyUnavailable` (503, fail closed).
Heavy imports (torch, transformers) happen only when a backend is built.
"""

from modelport.safety.backends import create_backend
from modelport.safety.backends.base import Analysis, SafetyBackend
from modelport.safety.blocklists import Blocklist, BlocklistSet
from modelport.safety.config import ContentFilterConfig
from modelport.safety.screening import (
    ContentFiltered,
    SafetyUnavailable,
    Screener,
    StreamScreener,
    StreamStep,
    Verdict,
    empty_results,
    error_body,
)

__all__ = [
    "Analysis",
    "Blocklist",
    "BlocklistSet",
    "ContentFilterConfig",
    "ContentFiltered",
    "SafetyBackend",
    "SafetyUnavailable",
    "Screener",
    "StreamScreener",
    "StreamStep",
    "Verdict",
    "create_backend",
    "empty_results",
    "error_body",
]
