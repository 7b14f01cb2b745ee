"""How the `llm-judge` content-filter backend reaches its chat deployment.

The judge is an ordinary chat deployment of the workspace (`judge_deployment` in the content-filter
configuration), called through its own pool like any request, but not through the gateway's
request path: its traffic is not screened again (the judge would otherwise judge itself) and
no key is involved. It must be in the geography of the deployment it screens for (checked when
the configuration is saved, and again on every call: a judge moved or recreated elsewhere is
refused, never used). Its tokens are recorded as usage of the judge deployment (api
`content_filter.judge`), counts only. Any failure raises, and the screener fails closed.
"""

from __future__ import annotations

from modelport.errors import ModelportError
from modelport.inference import calls
from modelport.inference.gateway import Gateway
from modelport.safety.backends.llm_judge import Complete
from modelport.safety.screening import SafetyUnavailable
from modelport.safety.service import JudgeFactory
from modelport.workers.protocol import GenerateBody

#: Llama Guard answers in two short lines ("unsafe" / "S1,S3"); more is never needed.
JUDGE_MAX_TOKENS = 24


def judge_factory(gateway: Gateway) -> JudgeFactory:
    """The SafetyService's JudgeFactory for this gateway."""

    def make(workspace_id: str, name: str, geography: str | None) -> Complete:
        async def complete(messages: list[dict[str, str]]) -> str:
            route = gateway.by_name.get((workspace_id, name))
            if route is None or route.task != "chat-completion":
                raise SafetyUnavailable(f"The content filter's judge deployment '{name}' does not exist (any more); "
                                        "the owner must update the filter configuration.")
            if geography is not None and route.geography != geography:
                raise SafetyUnavailable(f"The content filter's judge deployment '{name}' is not in this deployment's "
                                        "geography; the text was not sent to it.")
            try:
                calls.check_ready(route)
                gen = GenerateBody(messages=messages, max_tokens=JUDGE_MAX_TOKENS, temperature=0.0)
                choices, usage = await calls.collect(calls.generate(gateway, route, gen), 1)
            except ModelportError as exc:
                raise SafetyUnavailable(f"The content filter's judge deployment '{name}' did not answer "
                                        f"({exc.status_code}); the request was not processed.") from exc
            gateway.record_usage(route, "content_filter.judge", usage.prompt_tokens, usage.completion_tokens,
                                 "success")
            return "".join(choices[0].text)

        return complete

    return make
