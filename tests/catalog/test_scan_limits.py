"""Hostile chat templates that pass the static checks but exhaust time, CPU or memory.

Each one must end as a scan finding (`chat_template.limits`, a security finding) in bounded
time, and a template that passed the scan must not be able to hang the renderer a worker calls
for every chat request. The per-test timeouts turn a hang (what these templates did before)
into a failure instead of a stuck suite; they are not speed assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modelport.catalog.scanning import render_chat_template, scan_model
from modelport.catalog.scanning.limits import TemplateLimits, TemplateToCheck, check_templates
from modelport.errors import Unprocessable
from modelport.runtimes.base import render_chat
from tests.support.artifacts import write_gguf

#: The template of the issue: 9e12 empty iterations.
NESTED_LOOP = '{% set s="x"*3000000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}'
#: About 8 x 24 MB more at each of 200 iterations (each list alone is within the size limit).
MEMORY_BOMB = ('{% set l = ("x" * 3000000)|list %}{% set ns = namespace(a=[]) %}{% for i in range(200) %}'
               '{% set ns.a = ns.a + [' + ", ".join(["l|list"] * 8) + '] %}{% endfor %}{{ messages[0].content }}')
#: 2**40 macro calls, each level well inside Python's recursion limit.
EXPONENTIAL_RECURSION = ('{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}'
                         '{{ f(0) }}{{ messages[0].content }}')
#: Unbounded recursion: Python's own limit ends it (a structure finding: it renders nothing).
DEEP_RECURSION = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
#: Straight-line work (no loop, call or filter between the operations), so the renderer's steps
#: never see it: 3,000 comparisons of two lists of 3 million items each.
STRAIGHT_LINE = '{% set l = ("x" * 3000000)|list %}{% set m = ("x" * 3000000)|list %}' + "{{ l == m }}" * 3000
#: Nested deeper than Python's parser recursion allows.
DEEP_NESTING = "{{ " + " and ".join(["(1 == 1)"] * 3000) + " }}"


def limits_finding(template: str, tmp_path) -> str:
    report = scan_model({"m.gguf": write_gguf(tmp_path / "m.gguf", chat_template=template)}, "gguf")
    assert not report.passed
    (finding,) = report.findings
    assert (finding.file, finding.check, finding.kind) == ("m.gguf", "chat_template.limits", "security"), finding
    assert "'tokenizer.chat_template'" in finding.message
    return finding.message


@pytest.mark.timeout(120)
def test_the_issues_nested_loop_is_a_finding(tmp_path):
    assert "step budget" in limits_finding(NESTED_LOOP, tmp_path)


@pytest.mark.timeout(120)
def test_exponential_recursion_is_a_finding(tmp_path):
    message = limits_finding(EXPONENTIAL_RECURSION, tmp_path)
    assert "step budget" in message or "time limit" in message


@pytest.mark.timeout(120)
def test_memory_bomb_is_stopped_by_the_memory_limit(tmp_path):
    assert "memory limit of 512 MiB" in limits_finding(MEMORY_BOMB, tmp_path)


@pytest.mark.timeout(120)
def test_deep_recursion_is_a_structure_finding(tmp_path):
    report = scan_model({"m.gguf": write_gguf(tmp_path / "m.gguf", chat_template=DEEP_RECURSION)}, "gguf")
    (finding,) = report.findings
    assert (finding.check, finding.kind) == ("chat_template.render", "structure")
    assert "RecursionError" in finding.message


@pytest.mark.timeout(120)
def test_too_deeply_nested_template_is_a_structure_finding(tmp_path):
    """It used to raise RecursionError out of the scan (a 500 on import)."""
    report = scan_model({"m.gguf": write_gguf(tmp_path / "m.gguf", chat_template=DEEP_NESTING)}, "gguf")
    (finding,) = report.findings
    assert (finding.check, finding.kind) == ("chat_template.syntax", "structure")
    assert "nested too deeply" in finding.message
    with pytest.raises(Unprocessable) as err:
        render_chat_template(DEEP_NESTING, [{"role": "user", "content": "hi"}])
    assert err.value.details["reason"] == "syntax"


@pytest.mark.timeout(120)
def test_straight_line_work_is_stopped_by_the_cpu_limit():
    """What the renderer's steps cannot see, the child's RLIMIT_CPU stops (SIGXCPU)."""
    item = TemplateToCheck("m.gguf", "tokenizer.chat_template", STRAIGHT_LINE)
    (finding,) = check_templates([item], TemplateLimits(cpu_seconds=2, wall_seconds=100))
    assert finding.check == "chat_template.limits" and "CPU limit of 2 s" in finding.message


@pytest.mark.timeout(120)
def test_wall_time_limit_kills_the_child():
    item = TemplateToCheck("m.gguf", "tokenizer.chat_template", STRAIGHT_LINE)
    (finding,) = check_templates([item], TemplateLimits(cpu_seconds=100, wall_seconds=1))
    assert finding.check == "chat_template.limits" and "time limit of 1 s" in finding.message


@pytest.mark.timeout(120)
def test_the_template_that_broke_a_limit_is_named_and_earlier_ones_keep_their_verdict():
    items = [TemplateToCheck("a.jinja", "fine", "{{ messages[0].content }}"),
             TemplateToCheck("b.jinja", "bad", "{{ ''.__class__ }}"),
             TemplateToCheck("c.jinja", "bomb", MEMORY_BOMB),
             TemplateToCheck("d.jinja", "never reached", "{{ messages[0].content }}")]
    findings = check_templates(items)
    assert [(f.file, f.check) for f in findings] == [("b.jinja", "chat_template.sandbox"),
                                                     ("c.jinja", "chat_template.limits")]


def test_benign_templates_still_pass_through_the_child(tmp_path):
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    report = scan_model({"m.gguf": write_gguf(tmp_path / "m.gguf", chat_template=template)}, "gguf")
    assert report.passed, report.findings


# -- request time: what a worker renders for every chat request ---------------------------


#: Passes the scan (the sample conversations have at most four messages), then loops forever
#: on a longer conversation: what the static checks and the scan cannot see.
LATENT_LOOP = ('{% if messages|length > 5 %}' + NESTED_LOOP + '{% endif %}'
               '{% for m in messages %}{{ m.content }}{% endfor %}')


@pytest.mark.timeout(120)
def test_a_template_that_passed_the_scan_cannot_hang_the_worker_renderer(tmp_path):
    assert scan_model({"m.gguf": write_gguf(tmp_path / "m.gguf", chat_template=LATENT_LOOP)}, "gguf").passed
    messages = [{"role": "user", "content": f"turn {i}"} for i in range(6)]
    with pytest.raises(Unprocessable) as err:
        render_chat(LATENT_LOOP, messages, bos_token="", eos_token="")  # what the llama.cpp runtime calls
    assert err.value.details == {"reason": "limits", "limit": "step budget of 1000000 steps"}
    assert "turn" not in err.value.message
    # the same template still serves the conversations it was built for
    assert render_chat(LATENT_LOOP, messages[:2], bos_token="", eos_token="") == "turn 0turn 1"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("template", [EXPONENTIAL_RECURSION, MEMORY_BOMB], ids=["recursion", "memory"])
def test_request_time_renders_stop_at_the_deadline(template):
    with pytest.raises(Unprocessable) as err:
        render_chat_template(template, [{"role": "user", "content": "hi"}])
    assert err.value.details["reason"] == "limits"


# -- pickles (SEC-L5) ------------------------------------------------------------------------


def test_a_raw_pickle_larger_than_the_cap_is_refused_unread(tmp_path):
    """A raw pickle whose BINBYTES8 opcode declares 600 MB (a sparse file: no disk used). The
    disassembler reads an opcode's argument whole, so scanning it used to read the 600 MB into
    memory. Scanned in a child process whose peak resident memory is compared before and after."""
    path = tmp_path / "weights.pkl"
    size = 600 * 1000**2
    with open(path, "wb") as fh:
        fh.write(b"\x80\x04\x8e" + size.to_bytes(8, "little"))
        fh.truncate(size + 11)
    assert path.stat().st_size > 256 * 1024**2  # the cap, like zip members'
    code = (
        "import resource, sys, json\n"
        "from pathlib import Path\n"
        "from modelport.catalog.scanning.pickles import scan_pickle_file\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "found = scan_pickle_file(Path(sys.argv[1]), 'weights.pkl', 'pickle')\n"
        "grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(json.dumps({'grew_kib': grew, 'findings': [f.to_dict() for f in found]}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["grew_kib"] < 64 * 1024, out["grew_kib"]
    (finding,) = out["findings"]
    assert (finding["check"], finding["kind"]) == ("pickle.parse", "security")
    assert "too large to scan" in finding["message"]
