"""The demo end to end at a toy size: SFT, checkpoint choice, GRPO, the summary and the plots."""

import json

from gradascent.algos.grpo import GRPOConfig
from gradascent.demo import DemoSettings, run_demo


def test_demo_writes_accuracies_models_and_plots(tmp_path):
    settings = DemoSettings(model="qwen2-micro", max_operand=9, n_train=40, n_eval=10, n_val=10, sft_target=2.0,
                            sft_every=2, sft_steps=4, sft_batch_size=8,
                            grpo=GRPOConfig(steps=2, prompts_per_step=2, group_size=4, save_every=0, eval_every=2,
                                            eval_prompts=10))
    summary = run_demo(tmp_path / "demo", seed=0, settings=settings, progress=False, verbose=False)
    on_disk = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert on_disk["accuracy_before"] == summary["accuracy_before"]
    assert 0.0 <= summary["accuracy_before"] <= 1.0 and 0.0 <= summary["accuracy_after"] <= 1.0
    assert summary["sft_steps"] == 4  # a target of 200% is never reached: the last checkpoint is taken
    for path in ("sft/model/config.json", "grpo/model/model.safetensors", "plots/overview.png",
                 "plots/accuracy.png", "data/test.jsonl", "grpo/metrics.jsonl"):
        assert (tmp_path / "demo" / path).is_file(), path


def test_a_stopped_demo_continues_where_it_stopped(tmp_path, monkeypatch):
    import os
    import signal

    import pytest

    from gradascent.algos import grpo, sft
    from gradascent.errors import ConfigError
    from gradascent.run.resume import resume_run

    settings = DemoSettings(model="qwen2-micro", max_operand=9, n_train=40, n_eval=10, n_val=10, sft_target=2.0,
                            sft_every=2, sft_steps=4, sft_batch_size=8,
                            grpo=GRPOConfig(steps=3, prompts_per_step=2, group_size=4, save_every=0, eval_every=3,
                                            eval_prompts=10))
    out = tmp_path / "demo"

    def signal_once(module, name, sig):  # the signal arrives inside the phase's loop, as Ctrl-C would
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            monkeypatch.setattr(module, name, original)
            os.kill(os.getpid(), sig)
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    signal_once(sft, "sft_step", signal.SIGINT)
    stopped = run_demo(out, seed=0, settings=settings, progress=False, verbose=False)
    assert (stopped["phase"], stopped["stopped_by"], stopped["steps"]) == ("SFT", "SIGINT", 1)
    assert "continue with: gradascent demo --out" in stopped["stopped"] and not (out / "summary.json").exists()
    first = json.loads((out / "timing.json").read_text())  # the stopped run's seconds are kept for the sums
    assert set(first) == {"sft_seconds", "total_seconds"} and 0 < first["sft_seconds"] <= first["total_seconds"]
    with pytest.raises(ConfigError, match="started with other seed \\(seed 0\\)"):
        run_demo(out, seed=1, settings=settings, progress=False, verbose=False)

    signal_once(grpo, "grpo_update", signal.SIGTERM)
    stopped = run_demo(out, seed=0, settings=settings, progress=False, verbose=False)  # SFT resumes, then GRPO
    assert (stopped["phase"], stopped["stopped_by"], stopped["steps"]) == ("GRPO", "SIGTERM", 1)
    assert not (out / "grpo" / "model").exists()
    second = json.loads((out / "timing.json").read_text())
    assert second["sft_seconds"] > first["sft_seconds"] and second["grpo_seconds"] > 0

    summary = resume_run(out)  # the same as running the demo command again
    assert summary["sft_steps"] == 4 and summary["grpo_steps"] == 3
    times = json.loads((out / "timing.json").read_text())  # summed over the three runs, not this one's share
    assert {k: summary[k] for k in times} == times and times["grpo_seconds"] > second["grpo_seconds"]
    assert times["sft_seconds"] > second["sft_seconds"] and times["total_seconds"] > second["total_seconds"]
    assert times["sft_seconds"] + times["grpo_seconds"] <= times["total_seconds"]
    assert [json.loads(line)["step"] for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["accuracy_after"] == summary["accuracy_after"]
    assert resume_run(out) == json.loads((out / "summary.json").read_text())  # finished: nothing more to do
    with pytest.raises(ConfigError, match="already holds a finished demo run"):
        run_demo(out, seed=0, settings=settings, progress=False, verbose=False)
