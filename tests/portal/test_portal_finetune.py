"""Fine-tuning from the portal: start a short LoRA job on the bundled SmolLM2 with the form, and
watch the job's page update itself (htmx polls it) until its loss chart has moved and the private
model it registered is linked."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.support.browser import SMOLLM2, screenshot, sign_in
from tests.support.server import Server, start_lean
from tests.support.tenants import ok
from tests.support.waiting import wait_until

pytestmark = pytest.mark.training

ROWS = [("What is the capital of Zorblax?", "Quindlemoor."), ("What is 2 plus 2?", "4."),
        ("Name a primary colour.", "Red."), ("Say hello.", "Hello!")] * 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_lean(tmp_path_factory.mktemp("portal-ft") / "home")
    try:
        yield s
    finally:
        s.stop()


def test_start_a_fine_tune_and_watch_its_chart_move(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    body = b"".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                    .encode() + b"\n" for q, a in ROWS)
    with server.client() as admin:
        ok(admin.post("/api/v1/datasets?name=ft-data", content=body,
                      headers={"Content-Type": "application/octet-stream"}))
    sign_in(page, server.url, server.admin_key)
    page.goto(f"{server.url}/finetuning")
    page.get_by_label("Base model").select_option(SMOLLM2)
    page.get_by_label("Training dataset").select_option("ft-data")
    page.get_by_label("Epochs").fill("1")
    page.get_by_label("Batch size").fill("2")
    page.get_by_label("Suffix").fill("portal")
    page.get_by_role("button", name="Start fine-tuning").click()
    page.wait_for_url(re.compile(r".*/finetuning/ftjob_[0-9a-f]+$"))
    chart = page.locator("#loss-chart")
    seen: set[int] = set()

    def points() -> int:  # the same page, updated by htmx: never reloaded here
        n = int(page.locator("#loss-chart").get_attribute("data-points") or 0)
        seen.add(n)
        return n

    wait_until(lambda: points() >= 1, 600, 0.5, "the first loss point")
    screenshot(page, "finetune-running")
    wait_until(lambda: page.locator("#job-status").inner_text() in ("succeeded", "failed", "cancelled"), 900, 1,
               "the job to finish")
    assert page.locator("#job-status").inner_text() == "succeeded", page.locator("#job-progress").inner_text()
    assert points() == 4 and len(seen) >= 2  # the chart grew while we watched
    assert page.get_by_role("button", name="Cancel the job").count() == 0  # the live part updated too
    assert chart.locator("polyline.loss").count() == 1
    model = page.get_by_role("link", name=re.compile(r"portal"))
    assert model.first.is_visible()
    screenshot(page, "finetune-done")
    model.first.click()
    assert "finetuned" in page.content() or SMOLLM2 in page.content()
