"""PPO-RLHF: the reward assembly by hand, a few real updates, frozen models, NaN rewards, bad inputs, resume."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from _rlhf_fixtures import (  # noqa: F401  (fixtures)
    SRC,
    assert_bit_identical,
    cli,
    cli_error,
    ppo_config,
    rm_dir,
    sft_dir,
    state_of,
)
from gradascent.algos.ppo_rlhf import (
    assemble_rewards,
    completion_advantages,
    load_models,
    prompt_indices,
    train_ppo_rlhf,
)
from gradascent.errors import ConfigError, NonFiniteError
from gradascent.lm import ValueModel, build_model, char_tokenizer, load_model, save_model

T_ = torch.tensor


def test_reward_assembly_by_hand():
    # beta = 0.1, k1 = logp - logp_ref, missing-EOS penalty 1.0.
    # Row 0 finished, 3 tokens, k1 = [0.5, -0.2, 1.0], score 2: rewards [-0.05, 0.02, -0.1 + 2] = [-0.05, 0.02, 1.9]
    # Row 1 cut at the length limit, 1 token, k1 = [0.3], score -1 - 1 (penalty) = -2: [-0.03 - 2, 0, 0]
    logp = T_([[-1.0, -2.0, -0.5], [-0.7, -9.0, -9.0]])
    logp_ref = T_([[-1.5, -1.8, -1.5], [-1.0, 0.0, 0.0]])
    mask = T_([[True, True, True], [True, False, False]])
    rewards, kl, score = assemble_rewards(T_([2.0, -1.0]), logp, logp_ref, mask, T_([True, False]), 0.1,
                                          missing_eos_penalty=1.0)
    assert torch.allclose(kl, T_([[0.5, -0.2, 1.0], [0.3, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(rewards, T_([[-0.05, 0.02, 1.9], [-2.03, 0.0, 0.0]]), atol=1e-6)
    assert torch.equal(score, T_([2.0, -2.0]))
    # Without the penalty option the unfinished row keeps its score: -0.03 - 1 = -1.03.
    rewards, _, _ = assemble_rewards(T_([2.0, -1.0]), logp, logp_ref, mask, T_([True, False]), 0.1)
    assert math.isclose(rewards[1, 0].item(), -1.03, rel_tol=1e-6)


def test_completion_advantages_by_hand():
    rewards = T_([[-0.05, 0.02, 1.9], [-2.03, 0.0, 0.0]])
    values = T_([[0.5, 0.4, 0.6], [0.2, 9.0, 9.0]])  # values on padding must be ignored
    mask = T_([[True, True, True], [True, False, False]])
    # gamma = lam = 1: returns are rewards-to-go, [1.87, 1.92, 1.9] and [-2.03]; adv = returns - values.
    adv, ret = completion_advantages(rewards, values, mask, 1.0, 1.0, whiten_advantages=False)
    assert torch.allclose(ret, T_([[1.87, 1.92, 1.9], [-2.03, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(adv, T_([[1.37, 1.52, 1.3], [-2.23, 0.0, 0.0]]), atol=1e-6)
    # lam = 0: one-step TD errors r_t + V(s_{t+1}) - V(s_t), the state after the last token terminal:
    # [-0.05 + 0.4 - 0.5, 0.02 + 0.6 - 0.4, 1.9 - 0.6] = [-0.15, 0.22, 1.3]; row 1: -2.03 - 0.2 = -2.23.
    adv, _ = completion_advantages(rewards, values, mask, 1.0, 0.0, whiten_advantages=False)
    assert torch.allclose(adv, T_([[-0.15, 0.22, 1.3], [-2.23, 0.0, 0.0]]), atol=1e-6)
    # Whitened: mean 0 and unbiased std 1 over the four completion tokens, 0 on padding.
    adv, _ = completion_advantages(rewards, values, mask, 1.0, 1.0, whiten_advantages=True)
    counted = adv[mask]
    assert abs(counted.mean().item()) < 1e-6 and abs(counted.std().item() - 1.0) < 1e-5
    assert torch.equal(adv[~mask], torch.zeros(2))


def test_prompt_order_is_a_function_of_the_update():
    # 5 prompts, batches of 3: update 1 reads positions 3..5, i.e. the end of pass 0 and the start of pass 1.
    seq = [i for u in range(4) for i in prompt_indices(5, 3, u, seed=0)]
    assert sorted(seq[:5]) == list(range(5)) and sorted(seq[5:10]) == list(range(5))
    assert prompt_indices(5, 3, 1, seed=0) == seq[3:6]


def test_ppo_updates_train_policy_and_critic_and_leave_frozen_models_alone(sft_dir, rm_dir, tmp_path):
    cfg = ppo_config(sft_dir, rm_dir, tmp_path / "ppo", updates=3, kl_coef=0.2)
    models = load_models(cfg)
    policy0, critic0 = state_of(models.policy), state_of(models.critic)
    ref0, rm0 = state_of(models.reference), state_of(models.reward)
    summary = train_ppo_rlhf(cfg, models=models)

    for name, p in list(models.policy.named_parameters()) + list(models.critic.named_parameters()):
        before = policy0.get(name, critic0.get(name))
        assert not torch.equal(p.detach(), before), f"{name} did not change"
    assert_bit_identical(state_of(models.reference), ref0)
    assert_bit_identical(state_of(models.reward), rm0)

    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "rm_score", "kl", "kl_coef",
                "explained_variance", "response_length", "hidden_score_sampled"):
        assert all(isinstance(r[key], float) and math.isfinite(r[key]) for r in rows[1:]), key
    # Update 1 samples from the reference itself: KL exactly 0. Update 2's rewards were built with the beta
    # that the controller left after update 1: sum_t r_t = score - beta * sum_t KL_t, averaged over rows.
    assert rows[1]["kl"] == 0.0
    assert math.isclose(rows[2]["reward_total"], rows[2]["score"] - rows[1]["kl_coef"] * rows[2]["kl"], abs_tol=1e-5)
    assert rows[1]["kl_coef"] != 0.2  # the proportional controller moved beta
    for key in ("hidden_score_sft", "hidden_score_policy", "kl_to_reference", "rm_score_sft", "rm_score_policy"):
        assert math.isfinite(summary[key]), key

    # Saved models load with the lm API and hold the trained weights.
    policy, _ = load_model(tmp_path / "ppo" / "policy")
    assert_bit_identical(state_of(policy), state_of(models.policy))
    critic, _ = ValueModel.from_pretrained(tmp_path / "ppo" / "value")
    assert_bit_identical(state_of(critic), state_of(models.critic))


def test_a_policy_with_dropout_trains_with_it_off_so_the_first_ratio_is_one(sft_dir, rm_dir, tmp_path, monkeypatch):
    # pi_old is a forward after sampling; with attention dropout left on, it and the first training forward
    # drew different dropout masks, and the first minibatch's ratio was noise instead of 1.
    from gradascent.algos import ppo_rlhf

    cfg = ppo_config(sft_dir, rm_dir, tmp_path / "ppo", updates=1, epochs=1)
    models = load_models(cfg)
    for m in list(models.policy.modules()) + list(models.critic.modules()):
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.5
    seen = []
    real = ppo_rlhf.clipped_surrogate_loss
    monkeypatch.setattr(ppo_rlhf, "clipped_surrogate_loss",
                        lambda logp, old, *a, **k: seen.append((logp.detach(), old, a[1])) or real(logp, old, *a, **k))
    train_ppo_rlhf(cfg, models=models)
    logp, old, m = seen[0]
    assert torch.allclose(logp[m], old[m], atol=1e-5)


def test_lora_policy_shares_base_weights_with_reference_and_reward_model(sft_dir, tmp_path):
    import peft  # noqa: F401  (a dev dependency: the LoRA path is always tested)
    from _rlhf_fixtures import rm_config
    from gradascent.algos.reward_model import train_reward_model
    from gradascent.lm import adapters

    train_reward_model(rm_config(sft_dir, tmp_path / "rm", lora_r=4, lora_alpha=8))
    cfg = ppo_config(sft_dir, tmp_path / "rm" / "model", tmp_path / "ppo", lora_r=4, lora_alpha=8, updates=2,
                     value_init="sft")
    models = load_models(cfg)
    assert models.reference is None and models.reward_adapter  # one base, three roles
    base0 = {k: v for k, v in state_of(models.policy).items() if "lora_" not in k}
    lora0 = {k: v for k, v in state_of(models.policy).items() if "lora_" in k}
    head0 = state_of(models.reward.head)
    train_ppo_rlhf(cfg, models=models)
    after = state_of(models.policy)
    assert_bit_identical({k: after[k] for k in base0}, base0)  # the base (reference) never moves
    assert_bit_identical(state_of(models.reward.head), head0)
    moved = {k for k in lora0 if not torch.equal(after[k], lora0[k])}
    assert moved and all(".policy." in k for k in moved)  # only the policy adapter trains
    assert {k for k in lora0 if ".policy." in k and "lora_B" in k} <= moved
    # Sampling sees the adapter: the sampler's log-probs are the trained policy's, not the base's.
    from gradascent.algos.ppo_rlhf import policy_logprobs, reference_logprobs, sample

    gen = sample(models, ["Describe the sea:"] * 4, cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp, logp_ref = policy_logprobs(models.policy, gen, 1.0), reference_logprobs(models, gen, 1.0)
    m = gen.completion_mask
    assert torch.allclose(gen.logp[m], logp[m], atol=1e-4) and not torch.allclose(logp[m], logp_ref[m], atol=1e-4)
    # The saved policy is the merged model: a plain causal LM directory.
    merged, _ = load_model(tmp_path / "ppo" / "policy")
    assert not any("lora" in k for k in merged.state_dict())
    # A reward adapter trained on other base weights is refused with a clear message.
    other = build_model("qwen2-micro", seed=5)
    handle = adapters.add_lora(other, "policy", 4, 8)
    with pytest.raises(ConfigError, match="trained on other base weights"):
        adapters.load_adapter(handle, tmp_path / "rm" / "model", "reward", other)


def test_lora_without_peft_is_a_config_error(sft_dir, rm_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(ConfigError, match=r"LoRA adapters need the optional dependency peft: pip install"):
        load_models(ppo_config(sft_dir, rm_dir, tmp_path / "ppo", lora_r=4))


def test_nan_reward_model_stops_the_run_naming_the_batch_and_keeps_checkpoints(sft_dir, rm_dir, tmp_path, capsys):
    import shutil

    rm = tmp_path / "rm"
    shutil.copytree(rm_dir, rm)
    out = tmp_path / "ppo"
    train_ppo_rlhf(ppo_config(sft_dir, rm, out, updates=1))
    ckpt = out / "checkpoints" / "step_00000001"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    # The reward model starts returning inf or NaN (finite weights that overflow float32: a head of NaN is
    # refused as it loads); the same run continued for two more updates must stop at once.
    head = load_file(str(rm / "head.safetensors"))
    head["weight"] = torch.full_like(head["weight"], 3e38)
    save_file(head, str(rm / "head.safetensors"))
    cfg = ppo_config(sft_dir, rm, out, updates=3, resume=True)
    with pytest.raises(NonFiniteError, match=r"reward model returned NaN or inf at update 2, batch of prompts \["):
        train_ppo_rlhf(cfg)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001"]
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    # Through the command line: exit 2, one line.
    line = cli_error(capsys, "ppo", "--policy", str(sft_dir), "--reward-model", str(rm), "--out", str(tmp_path / "c"),
                     "--updates", "1", "--batch-size", "4", "--minibatch-size", "4", "--max-new-tokens", "4",
                     "--eval-prompts", "2")
    assert "reward model returned NaN or inf at update 1" in line


def test_cli_refuses_a_reward_model_whose_head_is_not_scalar(sft_dir, rm_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "rm2"
    shutil.copytree(rm_dir, bad)
    head = load_file(str(bad / "head.safetensors"))
    save_file({"weight": torch.cat([head["weight"]] * 2), "bias": torch.zeros(2)}, str(bad / "head.safetensors"))
    line = cli_error(capsys, "ppo", "--policy", str(sft_dir), "--reward-model", str(bad), "--out", str(tmp_path / "o"))
    assert "does not hold a (1, 32) head" in line


def test_cli_refuses_a_reference_with_another_tokenizer(sft_dir, rm_dir, tmp_path, capsys):
    tok = char_tokenizer()
    tok.add_tokens(["<extra>"])  # one more token: ids no longer mean the same text
    save_model(build_model("qwen2-micro", tok), tok, tmp_path / "ref")
    line = cli_error(capsys, "ppo", "--policy", str(sft_dir), "--reward-model", str(rm_dir), "--reference",
                     str(tmp_path / "ref"), "--out", str(tmp_path / "o"))
    assert "the reference model in" in line and "uses a different tokenizer from the policy" in line


def test_cli_refuses_prompts_that_cannot_fit_the_context_before_training(sft_dir, rm_dir, tmp_path, capsys):
    # qwen2-micro: 512 positions; a 507-character prompt plus max_new_tokens=6 needs 513
    rows = [{"prompt": f"p{i}"} for i in range(20)] + [{"prompt": "x" * 507}]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = cli_error(capsys, "ppo", "--policy", str(sft_dir), "--reward-model", str(rm_dir), "--prompts",
                     str(prompts), "--max-new-tokens", "6", "--out", str(tmp_path / "o"))
    assert "prompts.jsonl" in line and "is 507 tokens long, more than the 506 that fit" in line
    assert f"{prompts}:21 is 507 tokens long" in line  # named by its file and line, as the other trainers do
    assert not (tmp_path / "o").exists()  # checked before the run directory is made


WALL_CLOCK = ("wall_s",)


def _rows(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def test_exact_resume_after_sigkill(sft_dir, rm_dir, tmp_path):
    # The uninterrupted run and the resumption run here (one intra-op thread, as the killed subprocess).
    from gradascent.cli import main

    args = ["ppo", "--policy", str(sft_dir), "--reward-model", str(rm_dir), "--updates", "8", "--batch-size", "8",
            "--minibatch-size", "4", "--epochs", "2", "--max-new-tokens", "6", "--eval-prompts", "4",
            "--eval-every", "3", "--save-every", "2", "--keep-last", "1"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=SRC, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "gradascent.cli", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "step_00000002").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "summary.json").exists()  # killed mid-run, not after the end
    assert main(["resume", str(out)]) == 0  # finds the trainer from run.json, continues with the saved config

    for sub, name in (("policy", "model.safetensors"), ("value", "model.safetensors"), ("value", "head.safetensors")):
        a, b = load_file(str(tmp_path / "full" / sub / name)), load_file(str(out / sub / name))
        assert_bit_identical(a, b)
    assert _rows(out / "metrics.jsonl") == _rows(tmp_path / "full" / "metrics.jsonl")
    summary = lambda d: {k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k != "wall_s"}
    assert summary(out) == summary(tmp_path / "full")


def test_config_ranges_are_checked():
    from gradascent.algos.ppo_rlhf import PPORLHFConfig

    with pytest.raises(ConfigError, match="config key 'minibatch_size': 5 is not allowed; expected a divisor"):
        PPORLHFConfig(batch_size=8, minibatch_size=5)
    with pytest.raises(ConfigError, match="config key 'kl_target'"):
        PPORLHFConfig(kl_target=0.0)
    with pytest.raises(ConfigError, match="config key 'kl_threshold'"):
        PPORLHFConfig(kl_control="adaptive", kl_threshold=0.5)


@pytest.mark.parametrize("ddp", [False, True])
def test_seq_mean_token_sum_norm_divides_by_max_new_tokens_whatever_the_minibatch_width(ddp):
    # R3: one 3-token completion with per-token loss 1 gives 3 / L with L = max_new_tokens = 32, whether its
    # minibatch is cut to 3 or to 10 columns (the width of its longest completion) and with one process or
    # several (a world of one here: the divisors are the local counts).
    from gradascent.algos import ppo_rlhf
    from gradascent.core import aggregate

    cfg = ppo_rlhf.PPORLHFConfig(policy="p", reward_model="r", agg="seq_mean_token_sum_norm", max_new_tokens=32)
    for width in (3, 10):
        m = torch.zeros(1, width, dtype=torch.bool)
        m[0, :3] = True
        kwargs = ppo_rlhf._agg_kwargs(cfg, m, ddp) or {}
        assert float(aggregate(torch.ones(1, width), m, cfg.agg, **kwargs)) == pytest.approx(3 / 32)


def test_every_model_that_reads_the_sequences_must_hold_them(sft_dir, rm_dir, tmp_path):
    # A reference (or reward model) of a shorter context than the policy's: an IndexError deep in its forward
    # (learned positions) or positions past its training (RoPE), where the policy's context alone was checked.
    from _rlhf_fixtures import rm_config
    from gradascent.algos.reward_model import train_reward_model
    from gradascent.errors import ConfigError
    from gradascent.lm import load_model, save_model

    model, tok = load_model(str(sft_dir))
    model.config.max_position_embeddings = 16
    short = tmp_path / "short"
    save_model(model, tok, short)
    with pytest.raises(ConfigError, match="max_new_tokens=16 leaves no room for a prompt in the reference's "
                                          "context of 16 tokens"):
        train_ppo_rlhf(ppo_config(sft_dir, rm_dir, tmp_path / "ppo", reference=str(short), max_new_tokens=16))
    assert not (tmp_path / "ppo").exists()
    with pytest.raises(ConfigError, match=r"max_length=256 is more than the context of the model .*short \(16 "
                                          r"tokens, its max_position_embeddings\); set max_length <= 16"):
        train_reward_model(rm_config(short, tmp_path / "rm"))
    assert not (tmp_path / "rm").exists()


def test_a_resume_on_other_prompts_is_refused(sft_dir, rm_dir, tmp_path):
    from gradascent.algos.ppo_rlhf import PromptSet
    from gradascent.errors import ConfigError

    cfg = ppo_config(sft_dir, rm_dir, tmp_path / "ppo", updates=1, epochs=1)
    prompts = PromptSet(train=[f"Describe item {i}:" for i in range(8)], eval=["Describe the sea:"] * 4)
    train_ppo_rlhf(cfg, prompt_set=prompts)
    other = PromptSet(train=[f"Praise item {i}:" for i in range(8)], eval=prompts.eval)
    with pytest.raises(ConfigError, match="the training prompts of the prompt set passed from Python differ"):
        train_ppo_rlhf(dataclasses.replace(cfg, resume=True), prompt_set=other)


def test_prompts_the_tokenizer_cannot_read_are_warned_about(sft_dir, rm_dir, tmp_path):
    from gradascent.algos.ppo_rlhf import PromptSet
    from gradascent.errors import GradascentWarning

    cfg = ppo_config(sft_dir, rm_dir, tmp_path / "ppo", updates=1, epochs=1)
    prompts = PromptSet(train=[f"Describe item {i}:" for i in range(7)] + ["Décris la mer:"], eval=["Sea:"] * 4)
    with pytest.warns(GradascentWarning, match=r"PPO on the prompt set passed from Python: 1 of 12 texts hold "
                                               r"characters .* \(the first: training prompt 8, 'Décris la mer:'\)"):
        train_ppo_rlhf(cfg, prompt_set=prompts)
