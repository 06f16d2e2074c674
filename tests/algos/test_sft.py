"""SFT: it learns, every parameter moves, packing is exact, the guard skips NaN steps, and a run killed with
SIGKILL resumes bitwise as if it had never stopped."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import gradascent.lm.logprobs as logprobs_module
from gradascent.algos.sft import WALL_CLOCK_METRICS, DataOrder, SFTConfig, collate, encode_examples, pack, train_sft
from gradascent.errors import ConfigError, DataError, NonFiniteError
from gradascent.lm import build_model, char_tokenizer, load_model, sequence_logprobs
from gradascent.run.checkpoint import checkpoint_name, latest_checkpoint, load_checkpoint

SRC = str(Path(__file__).resolve().parents[2] / "src")
TINY = dict(model="qwen2-micro", task="arithmetic", n_train=200, n_eval=16, batch_size=16, lr=3e-3, warmup_steps=0,
            lr_schedule="constant", log_every=5, eval_every=0, eval_generate=0, save_every=0, progress=False)


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_sft_learns_and_moves_every_parameter(tmp_path):
    cfg = SFTConfig(**{**TINY, "steps": 40, "eval_generate": 8}, out=str(tmp_path / "run"))
    summary = train_sft(cfg)
    rows = _metrics(cfg.out)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    # From ~log(99) = 4.6 nats at random init, 40 steps of Adam at 3e-3 must take off at least one nat.
    assert rows[0]["loss"] > rows[-1]["loss"] + 1.0
    assert summary["steps"] == 40 and summary["skipped_steps"] == 0
    assert {"eval/loss", "eval/reward", "eval/reward/exact_match", "eval/reward/format_number"} <= set(rows[-1])
    before = build_model("qwen2-micro", seed=0)
    after, tok = load_model(tmp_path / "run" / "model")
    for (name, p0), (_, p1) in zip(before.named_parameters(), after.named_parameters()):
        assert not torch.equal(p0, p1), f"{name} did not change"
    for f in ("config.yaml", "summary.json", "metrics.jsonl"):
        assert (tmp_path / "run" / f).is_file()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["steps"] == 40


def test_packing_trains_the_same_per_token_losses():
    tok = char_tokenizer()
    model = build_model("qwen2-micro", tok, seed=1)
    rows = [{"prompt": "12+7=", "answer": "19"}, {"prompt": "3-5=", "answer": "-2"}, {"prompt": "1+1=", "answer": "2"}]
    ex = encode_examples(tok, rows, max_length=16)
    ids, mask, target = collate(ex, pad_id=0)
    pids, pmask, ptarget, ppos = pack(ex, length=16, pad_id=0)
    # 8 + 7 tokens fit in one row of 16; the third example (7 tokens) opens a second row.
    assert pids.shape == (2, 16) and int(ptarget.sum()) == int(target.sum()) == 3 + 3 + 2
    assert ppos[0].tolist() == list(range(8)) + list(range(7)) + [0]
    with torch.no_grad():
        plain = sequence_logprobs(model, ids, mask, target)[target]
        packed = sequence_logprobs(model, pids, pmask, ptarget, position_ids=ppos)[ptarget]
    assert torch.allclose(plain, packed, atol=1e-5)


def test_packed_run_learns(tmp_path):
    cfg = SFTConfig(**{**TINY, "steps": 20, "packing": True, "max_length": 64, "batch_size": 4},
                    out=str(tmp_path / "run"))
    train_sft(cfg)
    rows = _metrics(cfg.out)
    assert rows[0]["loss"] > rows[-1]["loss"] + 0.5


def test_data_order_is_seeded_and_resumable():
    a = DataOrder(5, seed=0)
    epoch0 = a.take(3) + a.take(3)  # the second take stops at the end of the epoch
    assert sorted(epoch0) == [0, 1, 2, 3, 4] and a.state_dict() == {"epoch": 0, "offset": 5}
    nxt = a.take(2)
    assert a.state_dict() == {"epoch": 1, "offset": 2}
    b = DataOrder(5, seed=0)
    b.load_state_dict({"epoch": 1, "offset": 0})
    assert b.take(2) == nxt
    assert DataOrder(50, seed=1).take(50) != DataOrder(50, seed=2).take(50)


def test_existing_run_and_too_long_examples_are_refused(tmp_path):
    cfg = SFTConfig(**{**TINY, "steps": 5}, out=str(tmp_path / "run"))
    train_sft(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_sft(cfg)
    config_before = (tmp_path / "run" / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match=r"another config \(lr 0\.003 there, 0\.01 here\)"):  # resumed with a different lr
        train_sft(SFTConfig(**{**TINY, "steps": 5, "lr": 1e-2}, out=str(tmp_path / "run"), resume=True))
    assert (tmp_path / "run" / "config.yaml").read_bytes() == config_before
    with pytest.raises(ConfigError, match=r"steps=3 is fewer than the 5 the run has done already"):
        train_sft(SFTConfig(**{**TINY, "steps": 3}, out=str(tmp_path / "run"), resume=True))
    assert (tmp_path / "run" / "config.yaml").read_bytes() == config_before  # it used to say steps: 3
    # A run directory of an earlier version, whose config.yaml calls max_grad_norm grad_clip, resumes.
    (tmp_path / "run" / "config.yaml").write_bytes(config_before.replace(b"max_grad_norm:", b"grad_clip:"))
    assert train_sft(SFTConfig(**{**TINY, "steps": 6}, out=str(tmp_path / "run"), resume=True))["steps"] == 6
    with pytest.raises(DataError, match="example 1 is 10 tokens long"):  # counted from 1, as file lines
        encode_examples(char_tokenizer(), [{"prompt": "12+34=", "answer": "46"} | {"answer": "460"}], max_length=9)
    with pytest.raises(ConfigError, match="steps"):
        SFTConfig(steps=0)


def _poison(monkeypatch, bad_calls):
    """Make the training forward (``lm.SequenceLogprobs``) return NaN log-probs on the given call numbers (1-based)."""
    calls = {"n": 0}
    real = logprobs_module.sequence_logprobs

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in bad_calls:
                out = out * float("nan")
        return out

    monkeypatch.setattr(logprobs_module, "sequence_logprobs", wrapped)


def test_guard_skips_nonfinite_steps(tmp_path, monkeypatch):
    _poison(monkeypatch, {3, 4})
    cfg = SFTConfig(**{**TINY, "steps": 10, "max_nonfinite": 3}, out=str(tmp_path / "run"))
    summary = train_sft(cfg)
    assert summary["skipped_steps"] == 2 and _metrics(cfg.out)[-1]["skipped"] == 2
    model, _ = load_model(tmp_path / "run" / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_guard_aborts_after_k_consecutive(tmp_path, monkeypatch):
    _poison(monkeypatch, set(range(5, 100)))
    cfg = SFTConfig(**{**TINY, "steps": 20, "max_nonfinite": 3, "save_every": 2}, out=str(tmp_path / "run"))
    with pytest.raises(NonFiniteError, match="3 consecutive"):
        train_sft(cfg)
    step, state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert step == 6  # steps 5 and 6 were skipped (no update) and checkpointed; step 7 is the third: abort
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def _run(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "gradascent.cli", "sft", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def _start_until_checkpoint(args, env, out):
    """Start `gradascent sft ARGS` and return the process as soon as OUT holds its first checkpoint."""
    proc = _run(args, env)
    deadline = time.monotonic() + 300
    while latest_checkpoint(out / "checkpoints") is None:
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return proc


def test_exact_resume_after_sigkill(tmp_path):
    cfg = {**TINY, "n_train": 128, "batch_size": 8, "steps": 60, "save_every": 10, "keep_last": 10,
           "eval_every": 20, "eval_generate": 8, "lr_schedule": "cosine", "warmup_steps": 5}
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    a, b = tmp_path / "a", tmp_path / "b"

    ref = _run(["--config", str(cfg_file), "--out", str(a)], env)
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()

    victim = _start_until_checkpoint(["--config", str(cfg_file), "--out", str(b)], env, b)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert not (b / "model").exists(), "the run finished before it could be killed; the test proves nothing"
    killed_at, _ = load_checkpoint(latest_checkpoint(b / "checkpoints"))
    assert killed_at < 60

    resumed = _run(["--config", str(cfg_file), "--out", str(b), "--resume", "true"], env)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()

    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k

    def clean(rows):
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK_METRICS} for r in rows]

    rows_a, rows_b = clean(_metrics(a)), clean(_metrics(b))
    assert [r["step"] for r in rows_b] == list(range(5, 61, 5))  # no row lost, none repeated
    assert rows_a == rows_b


def test_ctrl_c_exits_130_and_gradascent_resume_finishes_the_run(tmp_path):
    # Ctrl-C: a checkpoint, exit status 130 and the command that continues the run. `gradascent resume` then
    # trains to the end and says so (exit 0); resuming the finished run trains nothing and says so again.
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "steps": 150, "save_every": 5, "keep_last": 1}))
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    victim = _start_until_checkpoint(["--config", str(cfg_file), "--out", str(out)], env, out)
    victim.send_signal(signal.SIGINT)
    assert victim.wait(timeout=120) == 130
    err = victim.stderr.read().decode()
    assert "stopped by SIGINT after step" in err and f"continue with: gradascent resume {out}" in err
    assert not (out / "model").exists(), "the run finished before it could be interrupted; the test proves nothing"

    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "gradascent.cli", "resume", str(out)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{out}: finished.") and "steps=150" in done.stdout
    assert (out / "model").is_dir()


def test_cli_help_lists_every_field(capsys):
    from gradascent.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["sft", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--task", "--packing", "--save-every", "--resume", "--max-nonfinite"):
        assert flag in text


def test_preference_and_jsonl_tasks_train(tmp_path):
    # SFT on the preference task trains on the chosen completions and reports the hidden rule as eval reward.
    cfg = SFTConfig(**{**TINY, "task": "preference", "steps": 5, "eval_generate": 4}, out=str(tmp_path / "pref"))
    summary = train_sft(cfg)
    assert -1.0 <= summary["eval/reward/preference_reward"] <= 1.0
    data = tmp_path / "demo.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}:", "completion": f" {i}"}) + "\n" for i in range(20)))
    summary = train_sft(SFTConfig(**{**TINY, "task": str(data), "steps": 5}, out=str(tmp_path / "demo")))
    assert "eval/loss" in summary and "eval/reward" not in summary  # demonstrations carry no reward


def test_stop_at_ends_at_the_first_evaluation_that_reaches_it(tmp_path):
    # Every greedy reward is >= 0, so a threshold of 0 is reached at the first evaluation (step 5).
    cfg = SFTConfig(**{**TINY, "steps": 40, "eval_every": 5, "eval_generate": 8}, stop_at=0.0,
                    stop_metric="eval/reward/exact_match", out=str(tmp_path / "run"))
    summary = train_sft(cfg)
    assert summary["steps"] == 5
    assert summary["stopped_at_target"]["step"] == 5
    assert summary["stopped_at_target"]["value"] == summary["eval/reward/exact_match"] >= 0.0
    assert [r["step"] for r in _metrics(cfg.out)] == [5]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == checkpoint_name(5)
    # A reward above its maximum of 1.1 (exact match + format) is never reached: every step is trained.
    never = SFTConfig(**{**TINY, "steps": 10, "eval_every": 5, "eval_generate": 8}, stop_at=2.0,
                      out=str(tmp_path / "never"))
    summary = train_sft(never)
    assert summary["steps"] == 10 and "stopped_at_target" not in summary


def test_stop_metric_is_checked_before_training(tmp_path):
    cfg = SFTConfig(**{**TINY, "steps": 10, "eval_every": 5, "eval_generate": 8}, stop_at=0.5,
                    stop_metric="eval/reward/exact", out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"stop_metric.*eval/reward/exact_match"):
        train_sft(cfg)
    assert not (tmp_path / "run").exists()  # refused before the run directory is created
    with pytest.raises(ConfigError, match="stop_at"):
        SFTConfig(**{**TINY, "eval_every": 0}, stop_at=0.5)


def test_a_run_that_reached_its_target_is_finished_when_resumed(tmp_path):
    # stop_at 0 is reached at the first validation (step 2): resuming it trains no further step
    cfg = SFTConfig(**{**TINY, "steps": 10, "eval_every": 2, "eval_generate": 4, "log_every": 2, "stop_at": 0.0,
                       "stop_metric": "eval/reward/exact_match"}, out=str(tmp_path / "run"))
    first = train_sft(cfg)
    assert first["steps"] == 2 and first["stopped_at_target"]["step"] == 2
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = train_sft(dataclasses.replace(cfg, resume=True))
    assert again["steps"] == 2 and again["stopped_at_target"] == first["stopped_at_target"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_the_logged_lr_is_the_one_the_step_used(tmp_path):
    # Linear warmup over 50 steps from lr 2e-3: step k (1, 2, 3) trains at 2e-3 * k / 50.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warmup is longer than the run: warned about, on purpose here
        train_sft(SFTConfig(**{**TINY, "steps": 3, "lr": 2e-3, "warmup_steps": 50, "log_every": 1,
                               "eval_every": 0}, out=str(tmp_path / "run")))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([4e-5, 8e-5, 1.2e-4], rel=1e-9)


def test_a_resume_on_an_edited_task_file_is_refused(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}+1=", "answer": str(a + 1)}) + "\n" for a in range(40)))
    cfg = SFTConfig(**{**TINY, "task": str(data), "steps": 2, "save_every": 1}, out=str(tmp_path / "run"))
    train_sft(cfg)
    data.write_text("".join(json.dumps({"prompt": f"{a}*2=", "answer": str(a * 2)}) + "\n" for a in range(40)))
    with pytest.raises(ConfigError, match=r"the training examples of .*train.jsonl differ from the data the run "
                                          r"was trained on up to checkpoint .*step_00000002"):
        train_sft(dataclasses.replace(cfg, steps=3, resume=True))
    data.write_text("".join(json.dumps({"prompt": f"{a}+1=", "answer": str(a + 1)}) + "\n" for a in range(40)))
    assert train_sft(dataclasses.replace(cfg, steps=3, resume=True))["steps"] == 3  # the same data again: resumes
