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
