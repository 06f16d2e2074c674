"""GRPO step time and peak memory: gradascent's trainer against TRL's GRPOTrainer, in one process.

Workload, the same for both: a random-init Qwen2 preset (qwen2-5m, ~5.5 M parameters; qwen2-14m, ~13.8 M)
with the 99-token character vocabulary, saved to a temporary directory and loaded from there by both; 64
arithmetic prompts ("12+34=", 6 tokens); 8 prompts per step, G = 8 completions each (64 per step); exactly
32 completion tokens per completion (ours: stop_at_eos=False; TRL: min_new_tokens=32); float32; temperature
1; beta = 0 (no reference model on either side); one pass over each rollout (num_iterations = 1); AdamW at
lr 1e-5; a plain-callable reward (the number of 7s written). TRL runs offline on the CPU
(``report_to=[]``, ``use_cpu=True``, ``bf16=False``) and otherwise at its defaults, which include gradient
checkpointing (less activation memory for a second forward pass in the backward). Ours saves activation
memory instead by accumulating each update's gradient over several passes (``micro_batch_prompts``, ``--micro``,
default 2 prompts x 8 completions per pass: four passes, the same update); it is also run in one pass
(``ours_one_pass_*``) to show that trade.

The two trainers take turns: ``--rounds`` rounds of one run each (``--steps`` steps), ours first in even
rounds and TRL first in odd ones, so that a change in the machine's speed during the bench (this machine's
throughput drifts by 15-25% over minutes) falls on both alike instead of on whichever ran in that minute.

Figures per model size:
    s/step     median wall seconds per step over all rounds' steps after each run's first ``--warmup`` (ours:
               the trainer's own step timer; TRL: a callback from on_step_begin to on_step_end, which encloses
               its generation); ``speedup`` = TRL's over ours, and each round's own ratio beside it
    peak RSS   highest resident set size during a run minus the RSS before it (bench/_common.PeakRSS), the
               highest over the rounds
    one pass   ours with the whole update in one forward/backward pass, one run after the rounds (not
               interleaved: a side figure for the memory/time trade of ``--micro``)
    floor      model FLOPs of one step over the measured fp32 matmul throughput (the faster of torch.mm and
               oneDNN's kernel, ``_common.cpu_matmul_flops``): 2 N per generated token
               (64 x 32 sampled tokens plus the 64 x 6 prompt tokens of the prefill) plus 6 N per trained token
               (forward + backward over 64 x (6 + 32) tokens), N = parameters
    of_floor   s/step over that floor (1.0 would be matmul-bound with no overhead). The throughput is measured
               before each model size's runs and again after them, and the higher one is used. Our grouped
               forward runs each prompt once per group, so our step does fewer FLOPs than the floor counts.

Ours runs with ``save_every=0`` (since 2026-12-04 a checkpoint at the end only, as every trainer of ours
writes; before, none) and saves its final model; TRL runs with ``save_strategy="no"`` and saves neither. The
final checkpoint and model come after the last step's time is taken, so they count in ours' peak RSS only. Before each run the heap is collected and trimmed (``gc.collect``, glibc ``malloc_trim``), so that neither
run starts with free memory the allocator kept from the other.
The last line is one JSON object with ``speedup`` (TRL s/step / ours) per model size.

    PYTHONPATH=src python bench/grpo_vs_trl.py            # both sizes, 3 rounds of 8 steps each
    PYTHONPATH=src python bench/grpo_vs_trl.py --quick    # qwen2-5m, one round of 4 steps: a smoke run
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

from _common import PeakRSS, cpu_matmul_flops, emit, machine, median  # noqa: E402
from gradascent.algos.grpo import GRPOConfig, train_grpo  # noqa: E402
from gradascent.lm import build_model, count_parameters, load_model, save_model  # noqa: E402
from gradascent.lm.tokenizers import char_tokenizer  # noqa: E402
from gradascent.tasks import Task  # noqa: E402

PROMPTS_PER_STEP, G, NEW, LR = 8, 8, 32, 1e-5


def reward_sevens(prompts, completions, **_):  # noqa: ANN001, ANN201  (a plain callable for both trainers)
    return [float(c.count("7")) for c in completions]


def prompts() -> list[str]:
    g = torch.Generator().manual_seed(0)
    ab = torch.randint(10, 100, (64, 2), generator=g).tolist()
    return [f"{a}+{b}=" for a, b in ab]


def release_memory() -> None:
    """Return freed heap pages to the system, so the next run's RSS delta counts its own allocations."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def run_ours(model_dir: Path, steps: int, warmup: int, out: Path, micro: int | None) -> dict[str, float]:
    cfg = GRPOConfig(model=str(model_dir), steps=steps, prompts_per_step=PROMPTS_PER_STEP, group_size=G,
                     max_new_tokens=NEW, stop_at_eos=False, temperature=1.0, lr=LR, beta=0.0, num_iterations=1,
                     save_every=0, max_grad_norm=1.0, micro_batch_prompts=micro)
    task = Task("sevens", "completion", [{"prompt": p} for p in prompts()], [], (reward_sevens,), (1.0,), NEW)
    model, tok = load_model(model_dir)
    release_memory()
    with PeakRSS() as mem:
        train_grpo(cfg, out, model=model, tokenizer=tok, task=task, progress=False)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["completion_len"] == NEW for m in metrics), "every completion must be exactly 32 tokens"
    return {"times": [m["time/step_s"] for m in metrics][warmup:],
            "sample_times": [m["time/sample_s"] for m in metrics][warmup:],
            "train_times": [m["time/train_s"] for m in metrics][warmup:], "peak_rss_mb": mem.delta / 2**20}


def run_trl(model_dir: Path, steps: int, warmup: int, out: Path) -> dict[str, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.lengths: list[float] = []

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001, ANN201
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    args = TRLConfig(
        output_dir=str(out), report_to=[], use_cpu=True, bf16=False, fp16=False, max_steps=steps,
        per_device_train_batch_size=PROMPTS_PER_STEP * G, gradient_accumulation_steps=1, num_generations=G,
        max_completion_length=NEW, generation_kwargs={"min_new_tokens": NEW}, temperature=1.0, top_k=0,
        learning_rate=LR, beta=0.0, num_iterations=1, logging_steps=1, save_strategy="no",
        max_grad_norm=1.0, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    timer = StepTimer()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))  # AutoTokenizer swaps in Qwen2's own class
    release_memory()
    with PeakRSS() as mem:
        trainer = GRPOTrainer(model=model, reward_funcs=reward_sevens, args=args, processing_class=tok,
                              train_dataset=Dataset.from_dict({"prompt": prompts()}), callbacks=[timer])
        trainer.train()
    assert all(abs(n - NEW) < 1e-6 for n in timer.lengths), f"TRL completions not all {NEW} tokens: {timer.lengths}"
    return {"times": timer.times[warmup:], "peak_rss_mb": mem.delta / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="qwen2-5m,qwen2-14m")
    ap.add_argument("--steps", type=int, default=8, help="steps per run [default: 8]")
    ap.add_argument("--warmup", type=int, default=2, help="first steps of each run left out [default: 2]")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each trainer, taking turns [default: 3]")
    ap.add_argument("--micro", type=int, default=2, help="ours: prompts per forward/backward pass of an update "
                    "(micro_batch_prompts; the update is the same) [default: 2, four passes]")
    ap.add_argument("--quick", action="store_true", help="qwen2-5m only, one round of 4 steps (1 warm-up): a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.models, args.steps, args.warmup, args.rounds = "qwen2-5m", 4, 1, 1
    if args.rounds < 1 or args.warmup < 0 or args.steps <= args.warmup:
        ap.error("need --rounds >= 1 and --steps > --warmup >= 0")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import torch.utils.tensorboard  # noqa: F401  (imported before any measurement: imports are not part of a run)
    import trl  # noqa: F401

    rates = cpu_matmul_flops(n=1024, repeats=10)
    flops = max(rates.values())
    print(f"fp32 matmul throughput: {', '.join(f'{k} {v / 1e9:.1f}' for k, v in rates.items())} GFLOP/s "
          f"({torch.get_num_threads()} threads)")
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name in args.models.split(","):
            tok = char_tokenizer()
            model = build_model(name, tok, seed=0)
            model_dir = save_model(model, tok, tmp / name)
            n = count_parameters(model)
            del model
            prompt_len = len(prompts()[0])
            step_flops = 2 * n * PROMPTS_PER_STEP * G * (NEW + prompt_len) + 6 * n * PROMPTS_PER_STEP * G * (prompt_len + NEW)
            runs: dict[str, list[dict]] = {"ours": [], "trl": []}
            for r in range(args.rounds):
                for who in ("ours", "trl") if r % 2 == 0 else ("trl", "ours"):
                    out = tmp / f"{who}-{name}-{r}"
                    runs[who].append(run_ours(model_dir, args.steps, args.warmup, out, args.micro) if who == "ours"
                                     else run_trl(model_dir, args.steps, args.warmup, out))
                ratio = median(runs["trl"][-1]["times"]) / median(runs["ours"][-1]["times"])
                print(f"{name} round {r + 1}: ours {median(runs['ours'][-1]['times']):.3f} s/step, TRL "
                      f"{median(runs['trl'][-1]['times']):.3f} s/step: {ratio:.2f}x", flush=True)
            one_pass = run_ours(model_dir, args.steps, args.warmup, tmp / f"ours1-{name}", None)
            ours = {"s_per_step": median([t for x in runs["ours"] for t in x["times"]]),
                    "sample_s": median([t for x in runs["ours"] for t in x["sample_times"]]),
                    "train_s": median([t for x in runs["ours"] for t in x["train_times"]]),
                    "peak_rss_mb": max(x["peak_rss_mb"] for x in runs["ours"])}
            theirs = {"s_per_step": median([t for x in runs["trl"] for t in x["times"]]),
                      "peak_rss_mb": max(x["peak_rss_mb"] for x in runs["trl"])}
            round_ratios = [median(b["times"]) / median(a["times"]) for a, b in zip(runs["ours"], runs["trl"])]
            more = cpu_matmul_flops(n=1024, repeats=10)
            rates = {k: max(v, more[k]) for k, v in rates.items()}
            flops = max(flops, *more.values())
            floor = step_flops / flops
            speedup = theirs["s_per_step"] / ours["s_per_step"]
            figures[name] = {
                "params": n, "ours_s_per_step": round(ours["s_per_step"], 4),
                "ours_sample_s": round(ours["sample_s"], 4), "ours_train_s": round(ours["train_s"], 4),
                "trl_s_per_step": round(theirs["s_per_step"], 4), "speedup": round(speedup, 3),
                "ours_peak_rss_mb": round(ours["peak_rss_mb"], 1), "trl_peak_rss_mb": round(theirs["peak_rss_mb"], 1),
                "speedup_by_round": [round(x, 3) for x in round_ratios],
                "ours_one_pass_s_per_step": round(median(one_pass["times"]), 4),
                "ours_one_pass_peak_rss_mb": round(one_pass["peak_rss_mb"], 1),
                "floor_s": round(floor, 4), "ours_of_floor": round(ours["s_per_step"] / floor, 2),
                "trl_of_floor": round(theirs["s_per_step"] / floor, 2),
            }
            f = figures[name]
            print(f"{name} ({n / 1e6:.1f} M params): ours {f['ours_s_per_step']:.3f} s/step (sample "
                  f"{f['ours_sample_s']:.3f}, train {f['ours_train_s']:.3f}), peak RSS +{f['ours_peak_rss_mb']:.0f} MB | "
                  f"TRL {f['trl_s_per_step']:.3f} s/step, peak RSS +{f['trl_peak_rss_mb']:.0f} MB | speedup "
                  f"{f['speedup']:.2f}x (rounds: {', '.join(f'{x:.2f}' for x in f['speedup_by_round'])}) | floor {f['floor_s']:.3f} s: ours {f['ours_of_floor']:.1f}x, "
                  f"TRL {f['trl_of_floor']:.1f}x of it | ours in one pass: {f['ours_one_pass_s_per_step']:.3f} s/step, "
                  f"peak RSS +{f['ours_one_pass_peak_rss_mb']:.0f} MB", flush=True)
    print(f"fp32 matmul throughput, best measured: {flops / 1e9:.1f} GFLOP/s; load average now "
          f"{os.getloadavg()[0]:.2f}")
    emit({"bench": "grpo_vs_trl", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
          "load_average_end": round(os.getloadavg()[0], 2),
          "matmul_gflops": round(flops / 1e9, 1), "matmul_gflops_by_kernel": {k: round(v / 1e9, 1) for k, v in rates.items()}, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
          "micro_batch_prompts": args.micro,
          **{f"{k}_{name}": v for name, f in figures.items() for k, v in f.items()},
          "speedup": {name: f["speedup"] for name, f in figures.items()}})


if __name__ == "__main__":
    main()
