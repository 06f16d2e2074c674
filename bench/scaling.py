"""Data-parallel scaling: steps/s and tokens/s of GRPO and SFT on 1 and 2 processes, the same global batch.

CPU (the default without a GPU). Each run is the command line under torchrun, exactly as a user starts it:

    torchrun --standalone --nproc-per-node N -m gradascent.cli grpo|sft ...

with N = 1 and N = 2 and the same global batch, so the two runs compute the same updates (tests/dist prove
it) and differ only in how the work is split. Both use the whole machine: each of the N processes gets
cpu_count / N intra-op threads (``--threads`` overrides), so the figure answers "on this machine, is
splitting the batch over processes faster than one process on all cores?".

    GRPO  qwen2-5m, 8 prompts x G = 8 completions per step, exactly 32 sampled tokens each
          (stop_at_eos=False), beta = 0, one update per step; arithmetic prompts.
          s/step: median of the trainer's time/step_s (sampling + scoring + update) after the warm-up steps.
          tokens/s: sampled completion tokens per second, 8 x 8 x 32 / (s/step).
    SFT   qwen2-5m, 64 arithmetic examples per step, unpacked.
          s/step: median time between two metrics rows (log_every=1) after the warm-up steps.
          tokens/s: the trainer's tokens_per_s, the completion tokens (the ones in the loss) per second.

GPU (``torch.cuda.is_available()``, or ``--device cuda``): one process on one GPU, GRPO on a Qwen2 built from
the configuration of Qwen2-0.5B (24 layers, hidden 896, 14 heads, 2 KV heads, MLP 4864, its 151,936-token
tied embedding: 494 M parameters), random weights in bfloat16, with the built-in character tokenizer (ids
it has no character for decode to nothing; the reward is the length of the decoded text, so that groups
have a spread). 32 prompts x G = 8 completions of exactly 128 tokens per step; each update accumulates
its gradient over passes of 8 prompts (``micro_batch_prompts``), which bounds the activation memory.

    MFU   model FLOPs of a step over its time, over the bf16 matmul throughput measured on the card
          (8192 x 8192 matmuls): 2 N per prompt token of the prefill and per sampled token, 6 N per trained
          token (the grouped forward runs each prompt once for its G completions), N = parameters. The
          attention's own FLOPs are not counted, so the figure is a slight underestimate.

    PYTHONPATH=src python bench/scaling.py             # CPU without a GPU, GPU with one
    PYTHONPATH=src python bench/scaling.py --quick     # qwen2-micro, a few steps: a smoke run

The last line is one JSON object with the figures (CPU: ``speedup`` of 2 processes over 1 per algorithm).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

from _common import emit, machine, matmul_flops  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")

# (model, prompts per step, G, sampled tokens, steps, warm-up steps) and (model, batch, steps, warm-up)
GRPO_CPU = dict(model="qwen2-5m", prompts=8, G=8, new=32, steps=10, warmup=2)
SFT_CPU = dict(model="qwen2-5m", batch=64, steps=20, warmup=3)
GRPO_CPU_QUICK = dict(model="qwen2-micro", prompts=4, G=4, new=8, steps=3, warmup=1)
SFT_CPU_QUICK = dict(model="qwen2-micro", batch=16, steps=4, warmup=1)
GRPO_GPU = dict(prompts=32, G=8, new=128, micro=8, steps=7, warmup=2)
GRPO_GPU_QUICK = dict(prompts=8, G=4, new=32, micro=8, steps=3, warmup=1)


def torchrun(nproc: int, threads: int, args: list[str]) -> None:
    """``torchrun --standalone --nproc-per-node nproc -m gradascent.cli ARGS`` with ``threads`` per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "gradascent.cli", *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def grpo_cpu(nproc: int, threads: int, w: dict, out: Path) -> dict[str, float]:
    torchrun(nproc, threads, [
        "grpo", "--out", str(out), "--model", w["model"], "--task", "arithmetic", "--n-train", "256",
        "--steps", str(w["steps"]), "--prompts-per-step", str(w["prompts"]), "--group-size", str(w["G"]),
        "--max-new-tokens", str(w["new"]), "--stop-at-eos", "false", "--lr", "1e-5", "--save-every", "0"])
    rows = metrics(out)[w["warmup"]:]
    assert all(r["completion_len"] == w["new"] for r in rows), "every completion must have exactly `new` tokens"
    s = statistics.median(r["time/step_s"] for r in rows)
    return {"s_per_step": s, "tokens_per_s": w["prompts"] * w["G"] * w["new"] / s}


def sft_cpu(nproc: int, threads: int, w: dict, out: Path) -> dict[str, float]:
    torchrun(nproc, threads, [
        "sft", "--out", str(out), "--model", w["model"], "--task", "arithmetic", "--n-train", "2048",
        "--n-eval", "8", "--steps", str(w["steps"]), "--batch-size", str(w["batch"]), "--warmup-steps", "0",
        "--log-every", "1", "--eval-every", "0", "--eval-generate", "0", "--save-every", "0", "--progress", "false"])
    rows = [r for r in metrics(out) if "time_s" in r][w["warmup"]:]
    return {"s_per_step": statistics.median(r["time_s"] for r in rows),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows)}


def cpu(args: argparse.Namespace) -> None:
    grpo_w, sft_w = (GRPO_CPU_QUICK, SFT_CPU_QUICK) if args.quick else (GRPO_CPU, SFT_CPU)
    cores = os.cpu_count() or 1
    figures: dict[str, dict[int, dict[str, float]]] = {"grpo": {}, "sft": {}}
    threads: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            threads[n] = args.threads or max(1, cores // n)
            figures["grpo"][n] = grpo_cpu(n, threads[n], grpo_w, Path(tmp) / f"grpo-{n}")
            figures["sft"][n] = sft_cpu(n, threads[n], sft_w, Path(tmp) / f"sft-{n}")
    print(f"{'':6} {'processes':>9} {'threads each':>12} {'s/step':>8} {'steps/s':>8} {'tokens/s':>9}")
    for algo, by_n in figures.items():
        for n, f in by_n.items():
            print(f"{algo:6} {n:>9} {threads[n]:>12} {f['s_per_step']:>8.3f} {1 / f['s_per_step']:>8.2f} "
                  f"{f['tokens_per_s']:>9.0f}")
    speedup = {algo: round(by_n[1]["s_per_step"] / by_n[2]["s_per_step"], 3) for algo, by_n in figures.items()}
    print(f"2 processes over 1: GRPO {speedup['grpo']:.2f}x, SFT {speedup['sft']:.2f}x; load average now "
          f"{os.getloadavg()[0]:.2f}")
    emit({"bench": "scaling", "mode": "cpu", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
          "quick": args.quick, "load_average_end": round(os.getloadavg()[0], 2),
          "threads_per_process": {str(n): t for n, t in threads.items()},
          "grpo_workload": grpo_w, "sft_workload": sft_w,
          **{f"{algo}_{k}_{n}p": round(v, 4)
             for algo, by_n in figures.items() for n, f in by_n.items() for k, v in
             {**f, "steps_per_s": 1 / f["s_per_step"]}.items()},
          "speedup": speedup})


# --- GPU -----------------------------------------------------------------------------------------------


def qwen2_half_billion(vocab_size: int, pad_id: int, eos_id: int) -> torch.nn.Module:
    """A randomly initialised Qwen2 with the shape of Qwen2-0.5B, in bfloat16 on the current GPU."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=4096,
                      rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = pad_id, eos_id
    return model.to(device="cuda", dtype=torch.bfloat16)


def text_length(prompts, completions, **_):  # noqa: ANN001, ANN201  (a plain reward with a spread)
    return [float(len(c)) for c in completions]


def gpu(args: argparse.Namespace) -> None:
    from gradascent.algos.grpo import GRPOConfig, train_grpo
    from gradascent.lm import char_tokenizer, count_parameters, ensure_pad_token
    from gradascent.tasks import Task, arithmetic_task

    w = GRPO_GPU_QUICK if args.quick else GRPO_GPU
    name = torch.cuda.get_device_name()
    peak = max(matmul_flops(n=8192, repeats=20, dtype=torch.bfloat16, device="cuda") for _ in range(3))
    print(f"{name}: bf16 matmul throughput {peak / 1e12:.0f} TFLOP/s (8192 x 8192, best of 3)")
    tok = ensure_pad_token(char_tokenizer())
    model = qwen2_half_billion(151_936, tok.pad_token_id, tok.eos_token_id)
    n = count_parameters(model)
    rows = [{"prompt": r["prompt"]} for r in arithmetic_task(n_train=256, n_eval=1).train]
    task = Task("lengths", "completion", rows, [], (text_length,), (1.0,), w["new"])
    cfg = GRPOConfig(steps=w["steps"], prompts_per_step=w["prompts"], group_size=w["G"], max_new_tokens=w["new"],
                     stop_at_eos=False, lr=1e-6, beta=0.0, save_every=0, micro_batch_prompts=w["micro"],
                     device="cuda")
    with tempfile.TemporaryDirectory() as tmp:
        train_grpo(cfg, Path(tmp) / "grpo", model=model, tokenizer=tok, task=task, progress=False)
        rows_m = metrics(Path(tmp) / "grpo")[w["warmup"]:]
    assert all(r["completion_len"] == w["new"] for r in rows_m)
    s = statistics.median(r["time/step_s"] for r in rows_m)
    sample_s = statistics.median(r["time/sample_s"] for r in rows_m)
    train_s = statistics.median(r["time/train_s"] for r in rows_m)
    prompt_len = statistics.mean(len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows)
    P, G, T = w["prompts"], w["G"], w["new"]
    step_flops = 2 * n * P * (prompt_len + G * T) + 6 * n * (P * prompt_len + P * G * T)
    mfu = step_flops / s / peak
    tokens_per_s = P * G * T / s
    print(f"GRPO, Qwen2-0.5B shape ({n / 1e6:.0f} M parameters, bf16), {P} prompts x G = {G} x {T} tokens: "
          f"{s:.3f} s/step (sample {sample_s:.3f}, train {train_s:.3f}), {1 / s:.2f} steps/s, "
          f"{tokens_per_s:.0f} sampled tokens/s, MFU {100 * mfu:.1f}%")
    emit({"bench": "scaling", "mode": "gpu", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
          "device": name, "quick": args.quick, "workload": w, "params": n,
          "bf16_matmul_tflops": round(peak / 1e12, 1), "grpo_s_per_step": round(s, 4),
          "grpo_sample_s": round(sample_s, 4), "grpo_train_s": round(train_s, 4),
          "grpo_steps_per_s": round(1 / s, 3), "grpo_tokens_per_s": round(tokens_per_s, 1),
          "grpo_step_tflop": round(step_flops / 1e12, 2), "mfu": round(mfu, 4)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: the GPU benchmark if CUDA is available, else the CPU one")
    ap.add_argument("--threads", type=int, default=0, help="CPU: intra-op threads per process (0: cores / N)")
    ap.add_argument("--quick", action="store_true", help="tiny models, a few steps: a smoke run")
    args = ap.parse_args()
    use_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    gpu(args) if use_gpu else cpu(args)


if __name__ == "__main__":
    main()
