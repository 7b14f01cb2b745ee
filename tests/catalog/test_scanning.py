"""Artifact scanning: real bundled models pass; generated malicious and broken artifacts fail.

Every malicious fixture is generated in tmp_path by tests/catalog/malicious.py; gadget
payloads only create a marker file, and tests assert that the marker never appears.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from modelport.catalog.scanning import (
    Finding,
    ScanReport,
    load_weights_only,
    read_gguf_metadata,
    read_safetensors_metadata,
    render_chat_template,
    scan_model,
    sha256_file,
    verify_sha256,
)
from modelport.errors import IntegrityError, InvalidInput, NotFound, Unprocessable
from tests.support.artifacts import (
    FIRST_KEY_LENGTH_AT,
    PROTOCOL0_OS_SYSTEM,
    SMALL_TEMPLATE,
    UNKNOWN_GGML_TYPE,
    declare_member_size,
    gadget_pickle,
    gadgets,
    patch_bytes,
    patch_tensor,
    real_gguf,
    real_minilm_files,
    tensor_data_offset,
    torch_style_zip,
    truncated_copy,
    valid_safetensors,
    write_gguf,
    write_raw_safetensors,
)

GADGET_NAMES = [
    "os.system",
    "builtins.exec",
    "builtins.eval",
    "timeit.timeit",
    "pydoc.pipepager",
    "cProfile.run",
]
# os.system pickles under its real module name on Linux.
GADGET_GLOBALS = {"os.system": "posix.system"}


def checks(report: ScanReport) -> set[tuple[str, str, str]]:
    return {(f.file, f.check, f.kind) for f in report.findings}


def only_finding(report: ScanReport) -> Finding:
    assert not report.passed
    assert len(report.findings) == 1, report.findings
    return report.findings[0]


# ------------------------------------------------------------------ real models pass


def test_bundled_gguf_passes_and_records_sha256():
    """(Its speed is not asserted here: timings on a shared machine are noise.)"""
    path = real_gguf()
    report = scan_model({"SmolLM2-135M-Instruct.Q4_1.gguf": path}, "gguf")
    assert report.passed, report.findings
    assert report.findings == []
    info = report.files["SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert info["size"] == path.stat().st_size
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["format"] == "gguf"
    assert {"sha256", "gguf.structure", "chat_template.sandbox"} <= set(info["checks"])
    assert set(report.scanner) >= {"picklescan", "gguf", "jinja2", "safetensors", "policy"}


def test_bundled_gguf_metadata():
    meta = read_gguf_metadata(real_gguf())
    assert meta["architecture"] == "llama"
    assert meta["context_length"] == 8192
    assert meta["bos_token"] == "<|im_start|>"
    assert meta["eos_token"] == "<|im_end|>"
    assert meta["quantization"] == "Q4_1"
    assert meta["file_type"] == 3
    assert meta["tensor_count"] == 272
    assert 130_000_000 < meta["parameter_count"] < 140_000_000
    assert meta["license"] == "apache-2.0"
    assert "<|im_start|>" in meta["chat_template"]


def test_bundled_minilm_passes_and_metadata_comes_from_config():
    files = real_minilm_files()
    report = scan_model(files, "safetensors")
    assert report.passed, report.findings
    assert report.files["model.safetensors"]["format"] == "safetensors"
    assert "safetensors.structure" in report.files["model.safetensors"]["checks"]
    assert set(report.files) == set(files)
    meta = read_safetensors_metadata(files)
    assert meta["architectures"] == ["BertModel"]
    assert meta["model_type"] == "bert"
    assert meta["hidden_size"] == 384
    assert meta["max_position_embeddings"] == 512
    assert meta["context_length"] == 256  # sentence-transformers' max_seq_length wins
    assert meta["tensor_count"] > 50
    assert 20_000_000 < meta["parameter_count"] < 25_000_000


def test_smollm2_template_renders_im_start_shape():
    template = read_gguf_metadata(real_gguf())["chat_template"]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
    ]
    out = render_chat_template(template, messages, bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert out == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Without a system turn the template supplies its own; without a generation prompt it stops.
    out = render_chat_template(template, [{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert out.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert out.endswith("<|im_start|>user\nHi<|im_end|>\n")


# ------------------------------------------------------------------ pickles


@pytest.mark.parametrize("gadget", GADGET_NAMES)
@pytest.mark.parametrize("container", ["raw.pkl", "torch-zip.bin"])
def test_pickle_gadgets_are_security_findings(tmp_path, gadget, container):
    marker = tmp_path / "pwned"
    payload = gadget_pickle(gadgets(marker)[gadget])
    if container == "raw.pkl":
        path = tmp_path / "model.pkl"
        path.write_bytes(payload)
    else:
        path = torch_style_zip(tmp_path / "pytorch_model.bin", payload)
    weights = valid_safetensors(tmp_path / "model.safetensors")
    report = scan_model({path.name: path, "model.safetensors": weights}, "safetensors")
    assert not report.passed
    dangerous = [f for f in report.findings if f.check == "pickle.globals" and f.file == path.name]
    assert dangerous and all(f.kind == "security" for f in dangerous)
    expected = GADGET_GLOBALS.get(gadget, gadget)
    assert any(repr(expected) in f.message and "code-execution" in f.message for f in dangerous), dangerous
    assert report.files[path.name]["format"] == ("pickle" if container == "raw.pkl" else "zip")
    assert not marker.exists()


def test_protocol0_pickle_without_magic_is_caught_by_extension(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(PROTOCOL0_OS_SYSTEM)
    report = scan_model(
        {"weights.pt": path, "model.safetensors": valid_safetensors(tmp_path / "m.st")}, "safetensors"
    )
    assert ("weights.pt", "pickle.globals", "security") in checks(report)
    assert any("'os.system'" in f.message for f in report.findings)


def test_pickle_hidden_under_another_extension_is_caught_by_magic(tmp_path):
    path = tmp_path / "extra_state"
    path.write_bytes(gadget_pickle(gadgets(tmp_path / "pwned")["builtins.exec"]))
    st = valid_safetensors(tmp_path / "model.safetensors")
    report = scan_model({"extra_state": path, "model.safetensors": st}, "safetensors")
    assert ("extra_state", "pickle.globals", "security") in checks(report)


def test_pickle_global_outside_weights_only_allowlist_is_refused(tmp_path):
    import collections
    import pickle

    path = tmp_path / "counts.pkl"
    path.write_bytes(pickle.dumps({"w": collections.Counter("ab")}))
    weights = valid_safetensors(tmp_path / "m.safetensors")
    report = scan_model({"counts.pkl": path, "model.safetensors": weights}, "safetensors")
    finding = only_finding(report)
    assert (finding.check, finding.kind) == ("pickle.globals", "security")
    assert "'collections.Counter'" in finding.message and "weights-only" in finding.message


def test_unparseable_pickle_file_is_refused(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"\xff\xfe not a pickle at all" * 10)
    weights = valid_safetensors(tmp_path / "m.safetensors")
    report = scan_model({"junk.bin": path, "model.safetensors": weights}, "safetensors")
    assert not report.passed
    assert all(f.file == "junk.bin" for f in report.findings)
    assert any(f.check == "pickle.parse" for f in report.findings)


def test_storage_bytes_that_look_like_pickle_are_not_false_positives(tmp_path):
    import pickle

    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
        zf.writestr("archive/data/0", b"\x80\x02" + bytes(range(256)) * 4)
    report = scan_model(
        {path.name: path, "model.safetensors": valid_safetensors(tmp_path / "m.safetensors")}, "safetensors"
    )
    assert report.passed, report.findings


def test_zip_pickle_declaring_a_huge_size_is_refused_unread(tmp_path):
    path = torch_style_zip(tmp_path / "pytorch_model.bin", gadget_pickle({"w": 1}))
    declare_member_size(path, "archive/data.pkl", 3 * 1024**3)
    report = scan_model(
        {path.name: path, "model.safetensors": valid_safetensors(tmp_path / "m.safetensors")}, "safetensors"
    )
    finding = only_finding(report)
    assert (finding.check, finding.kind) == ("pickle.parse", "security")
    assert "'archive/data.pkl'" in finding.message and "too large to scan" in finding.message


def test_benign_torch_state_dict_passes_and_loads_weights_only(tmp_path):
    import torch
    path = tmp_path / "pytorch_model.bin"
    torch.save({"linear.weight": torch.ones(2, 3), "linear.bias": torch.zeros(2, dtype=torch.bfloat16)}, path)
    st = valid_safetensors(tmp_path / "model.safetensors")
    report = scan_model({"pytorch_model.bin": path, "model.safetensors": st}, "safetensors")
    assert report.passed, report.findings
    assert report.files["pytorch_model.bin"]["checks"] == ["sha256", "pickle.globals"]
    state = load_weights_only(path)
    assert state["linear.weight"].shape == (2, 3)


@pytest.mark.parametrize("gadget", ["os.system", "builtins.exec"])
def test_weights_only_loader_refuses_gadgets_without_running_them(tmp_path, gadget):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(gadget_pickle(gadgets(marker)[gadget], protocol=2))
    with pytest.raises(Unprocessable, match="weights-only"):
        load_weights_only(path)
    assert not marker.exists()


# ------------------------------------------------------------------ GGUF structure


def scan_gguf(path: Path) -> ScanReport:
    return scan_model({path.name: path}, "gguf")


def test_small_valid_gguf_passes(tmp_path):
    report = scan_gguf(write_gguf(tmp_path / "tiny.gguf"))
    assert report.passed, report.findings
    meta = read_gguf_metadata(tmp_path / "tiny.gguf")
    assert (meta["bos_token"], meta["eos_token"], meta["context_length"]) == ("<s>", "</s>", 128)
    assert meta["parameter_count"] == 40 and meta["tensor_count"] == 2
    assert meta["quantization"] == "F32"


@pytest.mark.parametrize("n_bytes", [3, 20, 1_000, 1_000_000])
def test_truncated_real_gguf_header_is_a_structure_finding(tmp_path, n_bytes):
    path = truncated_copy(real_gguf(), tmp_path / "cut.gguf", n_bytes)
    finding = only_finding(scan_gguf(path))
    assert (finding.file, finding.kind) == ("cut.gguf", "structure")
    assert finding.check == "gguf.header"
    with pytest.raises(Unprocessable, match=r"cut\.gguf"):
        read_gguf_metadata(path)


def test_truncated_real_gguf_in_tensor_data_names_the_tensor_out_of_bounds(tmp_path):
    size = 50_000_000
    path = truncated_copy(real_gguf(), tmp_path / "cut.gguf", size)
    report = scan_gguf(path)
    assert not report.passed
    assert checks(report) == {("cut.gguf", "gguf.tensor_bounds", "structure")}
    first = report.findings[0]
    assert f"the file has only {size} bytes" in first.message and "tensor '" in first.message
    assert "more tensor problems" in report.findings[-1].message  # listed ten, counted the rest
    with pytest.raises(Unprocessable, match="truncated"):
        read_gguf_metadata(path)


def test_bad_magic(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    patch_bytes(path, 0, b"GGML")
    finding = only_finding(scan_gguf(path))
    assert finding.check == "gguf.header" and "magic" in finding.message


def test_unsupported_version(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    patch_bytes(path, 4, struct.pack("<I", 1))
    assert "version 1" in only_finding(scan_gguf(path)).message


def test_bogus_string_length(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    patch_bytes(path, FIRST_KEY_LENGTH_AT, struct.pack("<Q", 2**62))
    finding = only_finding(scan_gguf(path))
    assert finding.check == "gguf.header"
    assert str(2**62) in finding.message and "bogus string length" in finding.message


def test_absurd_tensor_count(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    patch_bytes(path, 8, struct.pack("<Q", 2**40))
    assert "declares 1099511627776 tensors" in only_finding(scan_gguf(path)).message


def test_unknown_kv_type(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    # The first key is general.architecture; its u32 type follows the key bytes.
    key = b"general.architecture"
    data = path.read_bytes()
    at = data.find(key) + len(key)
    patch_bytes(path, at, struct.pack("<I", 99))
    finding = only_finding(scan_gguf(path))
    assert finding.check == "gguf.kv_type" and "unknown value type 99" in finding.message


def test_unknown_tensor_dtype(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    patch_tensor(path, "output_norm.weight", dtype=UNKNOWN_GGML_TYPE)
    finding = only_finding(scan_gguf(path))
    assert finding.check == "gguf.tensor_type"
    assert "'output_norm.weight'" in finding.message
    assert f"unknown tensor type {UNKNOWN_GGML_TYPE}" in finding.message


def test_too_many_dimensions(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    patch_tensor(path, "output_norm.weight", n_dims=5)
    finding = only_finding(scan_gguf(path))
    assert finding.check == "gguf.tensor_info" and "has 5 dimensions" in finding.message


def test_tensor_offset_out_of_bounds(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    patch_tensor(path, "output_norm.weight", offset=32 * 1024 * 1024)
    finding = only_finding(scan_gguf(path))
    assert finding.check == "gguf.tensor_bounds" and "'output_norm.weight'" in finding.message


def test_misaligned_tensor_offset(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    patch_tensor(path, "output_norm.weight", offset=tensor_data_offset(path, "output_norm.weight") + 4)
    finding = only_finding(scan_gguf(path))
    assert finding.check == "gguf.tensor_bounds" and "alignment" in finding.message


def test_overlapping_tensors(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    patch_tensor(path, "output_norm.weight", offset=tensor_data_offset(path, "token_embd.weight"))
    finding = only_finding(scan_gguf(path))
    assert finding.check == "gguf.tensor_overlap"


def test_gguf_without_tensors_is_not_a_model(tmp_path):
    path = write_gguf(tmp_path / "vocab.gguf", tensors={})
    assert "declares no tensors" in only_finding(scan_gguf(path)).message


def test_gguf_model_needs_exactly_one_gguf(tmp_path):
    a = write_gguf(tmp_path / "a.gguf")
    b = write_gguf(tmp_path / "b.gguf")
    two = only_finding(scan_model({"a.gguf": a, "b.gguf": b}, "gguf"))
    assert (two.file, two.check, two.kind) == ("", "model.weights", "structure")
    readme = tmp_path / "README.md"
    readme.write_text("no weights here")
    none = only_finding(scan_model({"README.md": readme}, "gguf"))
    assert (none.check, none.kind) == ("model.weights", "structure") and ".gguf" in none.message


def test_read_gguf_metadata_errors_name_the_file(tmp_path):
    with pytest.raises(NotFound, match=r"missing\.gguf"):
        read_gguf_metadata(tmp_path / "missing.gguf")
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(Unprocessable, match=r"notes\.gguf: not a valid GGUF file.*magic"):
        read_gguf_metadata(not_gguf)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(Unprocessable, match="empty"):
        read_gguf_metadata(empty)


def test_findings_never_quote_values_from_the_file(tmp_path):
    secret = "TOPSECRET-value-that-must-not-leak"
    path = write_gguf(tmp_path / "m.gguf", extra_kv={"general.description": secret})
    patch_tensor(path, "output_norm.weight", offset=32 * 1024 * 1024)
    report = scan_gguf(path)
    assert not report.passed
    assert secret not in json.dumps(report.to_dict())


# ------------------------------------------------------------------ chat templates


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__['os'] }}",
    "{{ ''|attr('__class__') }}",
    "{{ messages['__class__'] }}",
    # hidden in a branch that the scan's sample conversations never reach
    "{% if messages|length > 99 %}{{ lipsum.__globals__ }}{% endif %}{{ messages[0]['content'] }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_gguf_chat_template_sandbox_escape_is_a_security_finding(tmp_path, template):
    path = write_gguf(tmp_path / "m.gguf", chat_template=template)
    finding = only_finding(scan_gguf(path))
    assert (finding.file, finding.check, finding.kind) == ("m.gguf", "chat_template.sandbox", "security")
    assert "'tokenizer.chat_template'" in finding.message


@pytest.mark.parametrize("template", ESCAPES[:3])
def test_render_refuses_escapes_at_runtime(template):
    with pytest.raises(Unprocessable) as err:
        render_chat_template(template, [{"role": "user", "content": "hi"}])
    assert err.value.details["reason"] == "security"


BOMBS = [
    "{{ 'a' * 1000000000 }}",
    "{{ 9 ** 99999999 }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x'|center(1000000000) }}",
    "{{ '%999999999s'|format('x') }}",
    "{{ '{:>999999999}'.format('x') }}",
    "{{ ('a' * 1000000)|replace('a', 'aaaaaaaaaa') }}",
]


@pytest.mark.parametrize("template", BOMBS)
def test_resource_bombs_are_refused_quickly(template):
    started = time.perf_counter()
    with pytest.raises(Unprocessable) as err:
        render_chat_template(template, [{"role": "user", "content": "hi"}])
    assert err.value.details["reason"] == "security"
    assert time.perf_counter() - started < 2.0


def test_chat_template_syntax_error_is_a_structure_finding(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", chat_template="{% for m in messages %}{{ m['content'] }")
    finding = only_finding(scan_gguf(path))
    assert (finding.check, finding.kind) == ("chat_template.syntax", "structure")
    assert "line 1" in finding.message


def test_template_that_refuses_every_conversation_fails(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", chat_template="{{ raise_exception('Roles must alternate') }}")
    finding = only_finding(scan_gguf(path))
    assert (finding.check, finding.kind) == ("chat_template.render", "structure")


def test_template_that_refuses_system_turns_still_passes(tmp_path):
    template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('No system role') }}{% endif %}"
        + SMALL_TEMPLATE
    )
    assert scan_gguf(write_gguf(tmp_path / "m.gguf", chat_template=template)).passed


def test_render_errors_never_quote_the_conversation():
    secret = "my private prompt 12345"
    template = "{{ raise_exception('bad message: ' + messages[0]['content']) }}"
    with pytest.raises(Unprocessable) as err:
        render_chat_template(template, [{"role": "user", "content": secret}])
    assert err.value.details["reason"] == "refused"
    assert secret not in str(err.value) and secret not in json.dumps(err.value.details)
    # jinja's own error text would quote the value here ("No test named 'my private prompt 12345'")
    with pytest.raises(Unprocessable) as err:
        render_chat_template(
            "{{ messages|select(messages[0]['content'])|list }}", [{"role": "user", "content": secret}]
        )
    assert err.value.details["reason"] == "render"
    assert secret not in str(err.value) and secret not in repr(err.value.details)


def test_hf_template_features_render():
    """tojson without HTML escaping, loop controls, namespace, and the {% generation %} tag."""
    template = (
        "{% set ns = namespace(n=0) %}"
        "{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
        "{% set ns.n = ns.n + 1 %}{% generation %}{{ m | tojson }}{% endgeneration %}\n{% endfor %}"
        "{{ ns.n }}{{ missing }}{{ messages[0].no_such_key }}"
    )
    out = render_chat_template(
        template,
        [{"role": "system", "content": "s"}, {"role": "user", "content": "<b>&'"}],
        add_generation_prompt=False,
    )
    assert out == '{"role": "user", "content": "<b>&\'"}1'  # trim_blocks eats the newline after a tag


def test_tokenizer_config_template_is_checked_for_safetensors_models(tmp_path):
    st = valid_safetensors(tmp_path / "model.safetensors")
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(json.dumps({"chat_template": ESCAPES[0]}))
    finding = only_finding(scan_model({"model.safetensors": st, "tokenizer_config.json": cfg}, "safetensors"))
    assert (finding.check, finding.kind) == ("chat_template.sandbox", "security")
    assert finding.file == "tokenizer_config.json"


# ------------------------------------------------------------------ safetensors


def scan_st(path: Path) -> ScanReport:
    return scan_model({path.name: path}, "safetensors")


def test_small_valid_safetensors_passes(tmp_path):
    path = valid_safetensors(tmp_path / "model.safetensors")
    assert scan_st(path).passed
    meta = read_safetensors_metadata({"model.safetensors": path})
    assert (meta["tensor_count"], meta["parameter_count"]) == (2, 10)
    assert meta["architectures"] is None  # no config.json


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "data", "check"),
    [
        ({"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, b"\0" * 12, "safetensors.tensor_overlap"),
        ({"a": {**F32, "data_offsets": [0, 64]}}, b"\0" * 8, "safetensors.tensor_bounds"),
        ({"a": {**F32, "shape": [3]}}, b"\0" * 8, "safetensors.tensor_size"),
        ({"a": {**F32, "dtype": "Q4_X"}}, b"\0" * 8, "safetensors.dtype"),
        ({"a": F32}, b"\0" * 16, "safetensors.coverage"),
        ({"a": {**F32, "data_offsets": [8, 16]}}, b"\0" * 16, "safetensors.coverage"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "safetensors.header"),
    ],
    ids=["overlap", "out-of-bounds", "wrong-size", "unknown-dtype", "trailing-bytes", "gap", "no-offsets"],
)
def test_broken_safetensors_headers(tmp_path, header, data, check):
    path = write_raw_safetensors(tmp_path / "model.safetensors", header, data)
    report = scan_st(path)
    assert not report.passed
    assert (("model.safetensors", check, "structure")) in checks(report), report.findings
    with pytest.raises(Unprocessable, match=r"model\.safetensors: not a valid safetensors file"):
        read_safetensors_metadata({"model.safetensors": path})


@pytest.mark.parametrize("keep", [4, 30, -3])
def test_truncated_safetensors(tmp_path, keep):
    full = valid_safetensors(tmp_path / "full.safetensors").read_bytes()
    path = tmp_path / "model.safetensors"
    path.write_bytes(full[:keep])  # the first bytes of the header, or all but the last bytes
    finding = only_finding(scan_st(path))
    assert finding.kind == "structure" and finding.file == "model.safetensors"


def test_huge_header_length_is_refused_before_reading(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    assert "limit" in only_finding(scan_st(path)).message


def test_real_minilm_truncated_is_caught(tmp_path):
    files = real_minilm_files()
    cut = truncated_copy(files["model.safetensors"], tmp_path / "model.safetensors", 40_000_000)
    report = scan_model({**files, "model.safetensors": cut}, "safetensors")
    assert checks(report) == {("model.safetensors", "safetensors.tensor_bounds", "structure")}
    assert "the data area holds 39988584 bytes" in report.findings[0].message


def test_directory_without_weights(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"architectures": ["BertModel"]}))
    finding = only_finding(scan_model({"config.json": cfg}, "safetensors"))
    assert (finding.file, finding.check, finding.kind) == ("", "model.weights", "structure")
    with pytest.raises(Unprocessable, match="without weights"):
        read_safetensors_metadata({"config.json": cfg})


def test_invalid_config_json(tmp_path):
    st = valid_safetensors(tmp_path / "model.safetensors")
    cfg = tmp_path / "config.json"
    cfg.write_text("{not json")
    report = scan_model({"model.safetensors": st, "config.json": cfg}, "safetensors")
    assert checks(report) == {("config.json", "json.parse", "structure")}
    with pytest.raises(Unprocessable, match=r"config\.json"):
        read_safetensors_metadata({"model.safetensors": st, "config.json": cfg})


def test_shard_index_must_name_present_shards(tmp_path):
    st = valid_safetensors(tmp_path / "model-00001-of-00002.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": st.name, "b": "model-00002-of-00002.safetensors"}}))
    finding = only_finding(scan_model({st.name: st, index.name: index}, "safetensors"))
    assert finding.check == "safetensors.index" and "model-00002-of-00002.safetensors" in finding.message


# ------------------------------------------------------------------ report, hashing, misc


def test_missing_file_is_a_finding_not_a_crash(tmp_path):
    st = valid_safetensors(tmp_path / "model.safetensors")
    report = scan_model({"model.safetensors": st, "vocab.txt": tmp_path / "gone.txt"}, "safetensors")
    assert checks(report) == {("vocab.txt", "file.read", "structure")}
    assert "missing" in report.findings[0].message


def test_unknown_format_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInput):
        scan_model({}, "onnx")  # type: ignore[arg-type]


def test_report_round_trips_through_json(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", chat_template=ESCAPES[0])
    patch_tensor(path, "output_norm.weight", offset=32 * 1024 * 1024)
    report = scan_gguf(path)
    assert not report.passed
    again = ScanReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report
    assert again.structural_errors == [f for f in report.findings if f.kind == "structure"]
    assert again.structural_errors and again.structural_errors[0].check == "gguf.tensor_bounds"


def test_sha256_file_streams_with_progress_and_verify_detects_tampering(tmp_path):
    path = tmp_path / "blob"
    data = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    seen: list[int] = []
    digest = sha256_file(path, progress=seen.append)
    assert digest == hashlib.sha256(data).hexdigest()
    assert seen == [1024 * 1024, 2 * 1024 * 1024, 3 * 1024 * 1024, len(data)]
    verify_sha256(path, digest.upper())
    tampered = tmp_path / "tampered"
    shutil.copy(path, tampered)
    patch_bytes(tampered, 100, b"\x00\x01")
    with pytest.raises(IntegrityError, match="tampered"):
        verify_sha256(tampered, digest)
