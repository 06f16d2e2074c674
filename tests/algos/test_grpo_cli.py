"""The `gradascent grpo` command: exact resume after SIGKILL, and reward functions that fail."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gradascent.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")
TIME_KEYS = {"time/step_s", "time/sample_s", "time/train_s", "time/elapsed_s"}


def _write_task(tmp_path: Path) -> Path:
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(4)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tmp_path: Path, **extra) -> Path:
    fields = dict(model="qwen2-micro", task=str(_write_task(tmp_path)), rewards=["numeric_match", "format_number"],
                  steps=30, prompts_per_step=2, group_size=4, max_new_tokens=6, lr=3e-3, save_every=5,
                  keep_last=2, num_iterations=2, temperature=0.9)
    fields.update(extra)
    path = tmp_path / "grpo.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in fields.items()))
    return path


def _cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gradascent.cli", "grpo", "--config", str(cfg), "--out", str(out), *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=SRC, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _rows(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append({k: v for k, v in row.items() if k not in TIME_KEYS})
    return out


def test_sigkill_then_resume_matches_an_unbroken_run_bit_for_bit(tmp_path):
    cfg = _config(tmp_path)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(_cmd(cfg, whole), env=_env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_cmd(cfg, broken), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = broken / "checkpoints" / "step_00000005"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert first.exists() and not (broken / "summary.json").exists()  # killed mid-run, not after it
    killed_at = max(int(p.name[5:]) for p in (broken / "checkpoints").glob("step_*"))
    assert killed_at < 30

    subprocess.run(_cmd(cfg, broken, "--resume"), env=_env(), check=True, capture_output=True, timeout=300)
    a = load_file(str(whole / "model" / "model.safetensors"))
    b = load_file(str(broken / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)  # bitwise equal weights
    rows_a, rows_b = _rows(whole), _rows(broken)
    assert [r["step"] for r in rows_b] == list(range(1, 31))
    assert rows_a == rows_b  # every metric of every step, including those after the resume
    # the resumed part really trained (a step whose groups all scored alike trains none and logs no approx_kl)
    assert any(r["step"] > killed_at and r.get("approx_kl", 0) > 0 for r in rows_b)


BAD_REWARDS = '''
def raises(prompts, completions, **kw):
    raise RuntimeError("boom")

def short(prompts, completions, **kw):
    return [0.0] * (len(completions) - 1)

def nan(prompts, completions, **kw):
    return [float("nan")] * len(completions)
'''


@pytest.mark.parametrize("fn, says", [
    ("raises", "raised RuntimeError: boom"),
    ("short", "returned 7 values for 8 completions"),
    ("nan", "returned nan for sample 0"),
])
def test_failing_reward_function_exits_2_with_one_line_naming_it(tmp_path, capsys, fn, says):
    module = tmp_path / "bad_rewards.py"
    module.write_text(BAD_REWARDS)
    cfg = _config(tmp_path, steps=1, save_every=0)
    rc = main(["grpo", "--config", str(cfg), "--out", str(tmp_path / "run"), "--rewards", f"{module}:{fn}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    lines = [line for line in err if line.startswith("gradascent: error:")]
    assert len(lines) == 1 and f"reward function '{fn}'" in lines[0] and says in lines[0], err


def test_a_file_of_prompts_alone_trains_with_a_reward_reading_its_columns(tmp_path):
    # rows {"prompt", "digit"}: the reward counts the row's digit in the completion, and takes the column as a
    # required argument, so the run fails unless every batch passes it
    rows = [{"prompt": f"{i}:", "digit": str(i % 10)} for i in range(12)]
    (tmp_path / "only_prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mine.py").write_text(
        "def count_digit(prompts, completions, digit, **_):\n"
        "    assert [p[:-1][-1] for p in prompts] == digit\n"
        "    return [float(c.count(d)) for c, d in zip(completions, digit)]\n")
    cfg = _config(tmp_path, task=str(tmp_path / "only_prompts.jsonl"), rewards=[f"{tmp_path / 'mine.py'}:count_digit"],
                  steps=2, save_every=0, max_new_tokens=5)
    assert main(["grpo", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    metrics = _rows(tmp_path / "run")
    assert len(metrics) == 2 and all("reward/count_digit" in m for m in metrics)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2
