"""GRPO's trainer on a tiny model: it learns, beta = 0 loads no reference, old log-probs are reused."""

import dataclasses
import json

import pytest
import torch

from gradascent.algos import grpo
from gradascent.algos.grpo import GRPOConfig, Rollout, grpo_loss, grpo_update, train_grpo
from gradascent.errors import CheckpointError, ConfigError
from gradascent.lm import load_model
from gradascent.lm.grouped import GroupedLogprobs, grouped_completion_logprobs
from gradascent.lm.tokenizers import char_tokenizer
from gradascent.run.guard import NonFiniteGuard
from gradascent.tasks import Task


def digit_fraction(prompts, completions, **_):
    """The fraction of a completion's characters that are digits (10 of the 99 tokens: ~0.1 at random)."""
    return [sum(c.isdigit() for c in s) / len(s) if s else 0.0 for s in completions]


ROWS = [{"prompt": p} for p in ("ab", "cd", "ef", "gh", "ij", "kl", "mn", "op")]
DIGITS = Task("digits", "completion", ROWS, [], (digit_fraction,), (1.0,), max_new_tokens=4)


def code_sum(prompts, completions, **_):
    """The sum of a completion's character codes / 1000: completions that differ score differently."""
    return [sum(map(ord, s)) / 1000 for s in completions]


CODES = Task("codes", "completion", ROWS, [], (code_sum,), (1.0,), max_new_tokens=4)


def _run(tmp_path, monkeypatch=None, task=DIGITS, **overrides):
    torch.set_num_threads(1)
    fields = dict(steps=2, prompts_per_step=2, group_size=4, lr=1e-2, save_every=0)
    fields.update(overrides)
    model, tok = load_model("qwen2-micro", seed=0)
    cfg = GRPOConfig(**fields)
    summary = train_grpo(cfg, tmp_path, model=model, tokenizer=tok, task=task, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def test_reward_rises_on_a_tiny_task(tmp_path):
    # A 19k-parameter random model writes a digit ~10% of the time. 30 GRPO steps of 4 prompts x 8
    # completions must bring the digit fraction above 0.8 (it reaches ~0.95 by step 25 with seed 0).
    _, rows = _run(tmp_path, steps=30, prompts_per_step=4, group_size=8)
    first = sum(r["reward"] for r in rows[:3]) / 3
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert first < 0.2
    assert last > 0.8, [round(r["reward"], 3) for r in rows]
    # entropy is logged over the trained groups: a step whose groups all scored alike trains none
    entropies = [r["entropy"] for r in rows if "entropy" in r]
    assert entropies[-1] < entropies[0]


def test_beta_zero_loads_no_reference(tmp_path, monkeypatch):
    calls = []
    real = grpo.load_reference
    monkeypatch.setattr(grpo, "load_reference", lambda cfg, model: calls.append(1) or real(cfg, model))
    _, rows = _run(tmp_path / "b0", beta=0.0)
    assert calls == [] and "kl" not in rows[-1]  # no reference model, no reference pass, no KL metric
    _, rows = _run(tmp_path / "b1", beta=0.04)
    assert calls == [1] and rows[-1]["kl"] >= 0.0  # the loader is called when a reference is needed


def _spy_losses(monkeypatch):
    seen = []
    real = grpo.grpo_loss

    def spy(logp, logp_old, *args, **kwargs):
        seen.append((logp, logp_old))
        return real(logp, logp_old, *args, **kwargs)

    monkeypatch.setattr(grpo, "grpo_loss", spy)
    return seen


def test_two_iterations_reuse_the_stored_old_logprobs(tmp_path, monkeypatch):
    seen = _spy_losses(monkeypatch)
    _run(tmp_path, steps=1, num_iterations=2)
    assert len(seen) == 2
    (logp1, old1), (logp2, old2) = seen
    assert torch.equal(old1, old2)  # the same stored log-probs for both passes
    assert torch.allclose(logp1.detach(), old1, atol=1e-6)  # first pass: nothing has moved yet, ratio 1
    # second pass: one AdamW update at lr 1e-2 later, the ratio pi/pi_old is far from 1
    assert (logp2.detach() - old2).abs().max() > 1e-3


def test_a_model_with_dropout_trains_with_it_off_so_the_first_ratio_is_one(tmp_path, monkeypatch):
    # A user's model may have attention dropout (GPT-2 has 0.1). pi_old and the samples come from the model
    # without it; had the training forward kept it on, the first pass's ratio would be dropout noise.
    model, tok = load_model("qwen2-micro", seed=0)
    for m in model.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.5
    seen = _spy_losses(monkeypatch)
    train_grpo(GRPOConfig(steps=1, prompts_per_step=2, group_size=4, lr=1e-2, save_every=0, num_iterations=2),
               tmp_path, model=model, tokenizer=tok, task=DIGITS, progress=False)
    (logp1, old1), _ = seen
    assert torch.allclose(logp1.detach(), old1, atol=1e-6)


def test_one_iteration_takes_old_logprobs_from_the_same_forward(tmp_path, monkeypatch):
    seen = _spy_losses(monkeypatch)
    calls = []
    real = grpo.GroupedLogprobs.forward
    monkeypatch.setattr(grpo.GroupedLogprobs, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    _run(tmp_path, steps=1, num_iterations=1)
    (logp, old), = seen
    assert not old.requires_grad and torch.equal(old, logp.detach())
    assert old.data_ptr() == logp.data_ptr()  # a detached view: no separate pass computed it
    assert calls == [1]  # one forward per step: the training one


def test_filtering_and_truncation_masks_take_tokens_out(tmp_path):
    # max_new_tokens=2 on a random model: nearly every completion is cut before EOS, so masking the
    # truncated ones leaves (almost) nothing in the loss; without it every sampled token counts.
    _, plain = _run(tmp_path / "a", steps=1, max_new_tokens=2)
    _, masked = _run(tmp_path / "b", steps=1, max_new_tokens=2, mask_truncated=True)
    assert plain[0]["tokens_in_loss"] == pytest.approx(plain[0]["completion_len"] * 8)
    kept_rows = 8 * (1 - masked[0]["truncated_frac"])
    assert masked[0]["tokens_in_loss"] <= 2 * kept_rows


def test_minibatches_pair_each_group_with_its_own_old_logprobs(tmp_path, monkeypatch):
    # Two minibatches of whole groups, shuffled: the first update sees an unchanged policy, so its ratio is
    # 1 only if every row is paired with its own stored old log-prob; the second comes after one update.
    seen = _spy_losses(monkeypatch)
    _run(tmp_path, steps=1, prompts_per_step=4, num_minibatches=2, task=CODES)  # no group without spread
    assert len(seen) == 2
    (logp1, old1), (logp2, old2) = seen
    assert logp1.shape == old1.shape == (8, logp1.shape[1])  # 2 groups of G=4
    assert torch.allclose(logp1.detach(), old1, atol=1e-5)
    assert (logp2.detach() - old2).abs().max() > 1e-3


def test_micro_batches_accumulate_to_the_same_update(tmp_path):
    # One step of 4 prompts in one pass, and in passes of 1 prompt (gradient accumulation with the
    # minibatch's divisors): the same rollout, so the same gradient and the same AdamW update up to rounding.
    models = []
    for micro in (None, 1):
        model, tok = load_model("qwen2-micro", seed=0)
        cfg = GRPOConfig(steps=1, prompts_per_step=4, group_size=4, lr=1e-2, save_every=0, micro_batch_prompts=micro)
        summary = train_grpo(cfg, tmp_path / str(micro), model=model, tokenizer=tok, task=CODES, progress=False)
        models.append((model, summary))
    (a, sa), (b, sb) = models
    assert sa["reward"] == sb["reward"]  # the same rollout
    assert sa["loss"] == pytest.approx(sb["loss"], abs=1e-6) and sa["entropy"] == pytest.approx(sb["entropy"], abs=1e-6)
    # The accumulated gradient itself (AdamW's first update hardly depends on its scale): per-pass divisors
    # would make it about 4 times larger.
    assert sa["grad_norm"] == pytest.approx(sb["grad_norm"], rel=1e-4) and sa["grad_norm"] > 0
    moved = max((p - q).abs().max().item() for p, q in zip(a.parameters(), load_model("qwen2-micro", seed=0)[0].parameters()))
    assert moved > 1e-3
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def _three_groups(rewards, seed):
    """A rollout of 3 prompts (5 tokens) x G = 4 completions (6 tokens, all finished); row 1 ends after 3
    tokens and row 5 after 2, so the groups hold 21, 20 and 24 tokens."""
    gen = torch.Generator().manual_seed(seed)
    prompt_ids, prompt_mask = torch.randint(3, 90, (3, 5), generator=gen), torch.ones(3, 5, dtype=torch.bool)
    completion_ids = torch.randint(3, 90, (12, 6), generator=gen)
    completion_mask = torch.ones(12, 6, dtype=torch.bool)
    completion_mask[1, 3:] = completion_mask[5, 2:] = False
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.ones(12, dtype=torch.bool),
                   rewards)


def test_groups_with_zero_advantages_run_no_pass_and_leave_the_update_unchanged():
    # beta = 0, ent_coef = 0: the second group's rewards agree, so its advantages are 0 and its tokens add
    # exactly 0 to the gradient. grpo_update must not forward it, yet keep its tokens in the token_mean
    # divisor: the SGD update equals the one computed by hand over all three groups.
    G = 4
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.0, 0.25, 1.0, 0.0])
    rollout = _three_groups(rewards, seed=0)
    prompt_ids, prompt_mask = rollout.prompt_ids, rollout.prompt_mask
    completion_ids, completion_mask = rollout.completion_ids, rollout.completion_mask
    cfg = GRPOConfig(group_size=G, prompts_per_step=3, loss_agg="token_mean", max_grad_norm=None, lr=0.5)

    model, _ = load_model("qwen2-micro", seed=0)
    seen = []

    class Spy(GroupedLogprobs):
        def forward(self, prompt_ids, *args, **kwargs):
            seen.append(prompt_ids.clone())
            return super().forward(prompt_ids, *args, **kwargs)

    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1.0)
    grpo_update(rollout, cfg, Spy(model), opt, sched, NonFiniteGuard(1), norm_len=6)
    assert [p.tolist() for p in seen] == [prompt_ids[[0, 2]].tolist()]  # one pass, group 1 left out

    by_hand, _ = load_model("qwen2-micro", seed=0)
    logp = grouped_completion_logprobs(by_hand, prompt_ids, prompt_mask, completion_ids, completion_mask, G)
    adv = grpo.advantages(rewards, "group", G, cfg.adv_eps)
    assert adv[4:8].abs().max() == 0 and adv.abs().min() == 0
    loss, _ = grpo_loss(logp, logp.detach(), adv, completion_mask, cfg, num_tokens=completion_mask.sum())
    loss.backward()
    with torch.no_grad():
        for p in by_hand.parameters():
            p -= cfg.lr * p.grad
    before, _ = load_model("qwen2-micro", seed=0)
    assert max((p - q).abs().max().item() for p, q in zip(model.parameters(), before.parameters())) > 1e-4
    for p, q in zip(model.parameters(), by_hand.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_filter_zero_std_takes_a_flat_group_out_of_the_loss_and_its_divisor():
    # Group 1's rewards all agree. Without filtering its 20 tokens (6 + 2 + 6 + 6) count in the token_mean
    # divisor (adding 0 to the numerator); with filter_zero_std they leave the divisor too, so the SGD update
    # is the loss over groups 0 and 2 divided by their own 6 * 8 - 3 = 45 tokens, computed here by hand.
    G = 4
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.7, 0.7, 0.7, 0.7, 0.0, 0.25, 1.0, 0.0])
    rollout = _three_groups(rewards, seed=1)
    prompt_ids, prompt_mask = rollout.prompt_ids, rollout.prompt_mask
    completion_ids, completion_mask = rollout.completion_ids, rollout.completion_mask
    cfg = GRPOConfig(group_size=G, prompts_per_step=3, loss_agg="token_mean", max_grad_norm=None, lr=0.5,
                     filter_zero_std=True)
    model, _ = load_model("qwen2-micro", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1.0)
    stats = grpo_update(rollout, cfg, GroupedLogprobs(model), opt, sched, NonFiniteGuard(1), norm_len=6)
    assert stats["tokens_in_loss"] == 45 and stats["zero_std_frac"] == pytest.approx(1 / 3)

    by_hand, _ = load_model("qwen2-micro", seed=0)
    kept = completion_mask.clone()
    kept[4:8] = False
    logp = grouped_completion_logprobs(by_hand, prompt_ids, prompt_mask, completion_ids, completion_mask, G)
    adv = grpo.advantages(rewards, "group", G, cfg.adv_eps)
    loss, _ = grpo_loss(logp, logp.detach(), adv, kept, cfg, num_tokens=torch.tensor(45))
    loss.backward()
    with torch.no_grad():
        for p in by_hand.parameters():
            p -= cfg.lr * p.grad
    unfiltered, _ = load_model("qwen2-micro", seed=0)  # the same rollout without the filter: another update
    opt2 = torch.optim.SGD(unfiltered.parameters(), lr=cfg.lr)
    grpo_update(rollout, dataclasses.replace(cfg, filter_zero_std=False), GroupedLogprobs(unfiltered),
                opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda u: 1.0), NonFiniteGuard(1), norm_len=6)
    for p, q, r in zip(model.parameters(), by_hand.parameters(), unfiltered.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert max((p - r).abs().max().item() for p, r in zip(model.parameters(), unfiltered.parameters())) > 1e-5


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("num_minibatches", [2, 6])
def test_skipping_silent_groups_gives_the_same_adamw_updates(monkeypatch, loss_agg, num_minibatches):
    # Six groups of 4: group 0 never finished (mask_truncated takes it out before any pass, so the kept
    # groups' positions differ from their ids), groups 1 and 3 scored alike (silent), 2, 4, 5 did not. Two
    # iterations (the second off-policy, against the stored old log-probs), shuffled minibatches, one group
    # per accumulation pass, AdamW with weight decay; with 6 minibatches three of them (groups 0, 1, 3) are
    # wholly silent, whose update is AdamW's step on a zero gradient. The same updates with the skip turned off (every group run);
    # with it on, neither the training passes nor the pi_old pass run a silent group.
    G, P = 4, 6
    gen = torch.Generator().manual_seed(1)
    prompt_ids, prompt_mask = torch.randint(3, 90, (P, 5), generator=gen), torch.ones(P, 5, dtype=torch.bool)
    completion_ids = torch.randint(3, 90, (P * G, 6), generator=gen)
    completion_mask = torch.ones(P * G, 6, dtype=torch.bool)
    completion_mask[9, 2:] = completion_mask[13, 4:] = False
    finished = torch.ones(P * G, dtype=torch.bool)
    finished[:G] = False
    rewards = torch.tensor([0.0, 1.0, 0.0, 1.0] + [0.1] * G + [1.0, 0.0, 0.3, 0.0] + [1.0] * G + [0.5, 0.0, 0.0, 0.2]
                           + [0.0, 0.0, 1.0, 0.0])
    rollout = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, finished, rewards)
    cfg = GRPOConfig(group_size=G, prompts_per_step=P, loss_agg=loss_agg, lr=1e-2, weight_decay=0.1,
                     num_iterations=2, num_minibatches=num_minibatches, micro_batch_prompts=1, mask_truncated=True)

    def update(skip: bool):
        if not skip:
            monkeypatch.setattr(grpo, "silent_groups", lambda adv, cfg, run_all=False: torch.zeros(P, dtype=torch.bool))
        model, _ = load_model("qwen2-micro", seed=0)
        seen = []  # the groups of every pass: training passes and the one computing pi_old

        def spy(self, ids, *args, **kwargs):
            seen.extend(int((prompt_ids == row).all(-1).nonzero()) for row in ids)
            return real(self, ids, *args, **kwargs)

        monkeypatch.setattr(grpo.GroupedLogprobs, "forward", spy)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1.0)
        grpo_update(rollout, cfg, GroupedLogprobs(model), opt, sched, NonFiniteGuard(1),
                    generator=torch.Generator().manual_seed(0), norm_len=6)
        return model, sorted(set(seen))

    real = GroupedLogprobs.forward

    skipped, trained = update(skip=True)
    full, trained_full = update(skip=False)
    assert trained == [2, 4, 5] and trained_full == [1, 2, 3, 4, 5]
    before, _ = load_model("qwen2-micro", seed=0)
    assert max((p - q).abs().max().item() for p, q in zip(skipped.parameters(), before.parameters())) > 1e-3
    for p, q in zip(skipped.parameters(), full.parameters()):
        assert torch.allclose(p, q, atol=1e-7, rtol=0)


@pytest.mark.parametrize("truncated", [[0], [0, 1, 2, 3]])
def test_masked_out_groups_keep_the_configured_number_of_updates(truncated):
    # 4 groups of 2, 4 minibatches, 2 iterations: every step makes 8 optimizer updates, the number the
    # learning-rate schedule counts, however many groups mask_truncated takes out (one, or all four). Before,
    # the groups taken out were dropped before the minibatches were cut, so a step made fewer updates and the
    # schedule never reached its end.
    G, P, T = 2, 4, 3
    gen = torch.Generator().manual_seed(0)
    finished = torch.ones(P * G, dtype=torch.bool)
    for g in truncated:
        finished[g * G:(g + 1) * G] = False
    rollout = Rollout(torch.randint(3, 90, (P, 4), generator=gen), torch.ones(P, 4, dtype=torch.bool),
                      torch.randint(3, 90, (P * G, T), generator=gen), torch.ones(P * G, T, dtype=torch.bool),
                      finished, torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5, 0.0]))
    cfg = GRPOConfig(group_size=G, prompts_per_step=P, num_minibatches=4, num_iterations=2, mask_truncated=True)
    model, _ = load_model("qwen2-micro", seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps = []
    opt.register_step_post_hook(lambda *_: steps.append(1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: max(0.0, 1 - u / 8))
    grpo_update(rollout, cfg, GroupedLogprobs(model), opt, sched, NonFiniteGuard(1),
                generator=torch.Generator().manual_seed(0), norm_len=T)
    assert len(steps) == 8 and sched.last_epoch == 8 and sched.get_last_lr() == [0.0]
    with pytest.raises(ConfigError, match="num_minibatches=3 does not divide the 4 prompts"):
        grpo_update(rollout, dataclasses.replace(cfg, prompts_per_step=6, num_minibatches=3),
                    GroupedLogprobs(model), opt, sched, NonFiniteGuard(1), norm_len=T)


def test_a_model_passed_from_python_is_checked_against_its_tokenizer(tmp_path):
    model, _ = load_model("qwen2-micro", seed=0)  # 99 embedding rows
    tok = char_tokenizer()
    tok.add_tokens([f"<extra{i}>" for i in range(5)])  # ids 99..103 have no row in the embedding
    with pytest.raises(CheckpointError, match="104 tokens but the model's embedding has only 99 rows"):
        train_grpo(GRPOConfig(steps=1, prompts_per_step=2, group_size=2), tmp_path / "run", model=model,
                   tokenizer=tok, task=DIGITS, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_resume_must_keep_the_config_and_the_task(tmp_path):
    # A resumed run may change how long it goes on (steps) but not what it optimises (lr): the second is
    # refused before anything is written. A Task object passed from Python is recorded as such in config.yaml,
    # so that `gradascent resume`, which cannot pass it again, refuses instead of training on cfg.task; a model
    # object likewise (before, config.yaml named cfg.model's default, and a resume died on a shape mismatch).
    from gradascent.run.resume import resume_run

    torch.set_num_threads(1)
    cfg = GRPOConfig(steps=2, prompts_per_step=2, group_size=4, lr=1e-2, save_every=1)
    model, tok = load_model("qwen2-micro", seed=0)
    train_grpo(cfg, tmp_path, model=model, tokenizer=tok, task=DIGITS, progress=False)
    assert "task: python:digits" in (tmp_path / "config.yaml").read_text()
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"another config \(lr 0\.01 there, 0\.5 here\)"):
        train_grpo(dataclasses.replace(cfg, lr=0.5, steps=3), tmp_path, model=model, tokenizer=tok, task=DIGITS,
                   resume=True, progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert "lr: 0.01" in (tmp_path / "config.yaml").read_text()
    assert "model: python:Qwen2ForCausalLM" in (tmp_path / "config.yaml").read_text()  # not the default qwen2-1m
    with pytest.raises(ConfigError, match="model passed from Python \\(Qwen2ForCausalLM\\)"):
        resume_run(tmp_path)
    only_task = tmp_path / "task-only"  # the task alone from Python, the model by name
    train_grpo(dataclasses.replace(cfg, model="qwen2-micro", steps=1), only_task, task=DIGITS, progress=False)
    with pytest.raises(ConfigError, match="task passed from Python \\('digits'\\)"):
        resume_run(only_task)
    summary = train_grpo(dataclasses.replace(cfg, steps=3), tmp_path, model=model, tokenizer=tok, task=DIGITS,
                         resume=True, progress=False)
    assert summary["steps"] == 3
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resuming_a_finished_run_keeps_its_summary(tmp_path):
    torch.set_num_threads(1)
    cfg = GRPOConfig(steps=2, prompts_per_step=2, group_size=4, lr=1e-2, save_every=1)
    model, tok = load_model("qwen2-micro", seed=0)
    first = train_grpo(cfg, tmp_path, model=model, tokenizer=tok, task=DIGITS, progress=False)
    again = train_grpo(cfg, tmp_path, model=model, tokenizer=tok, task=DIGITS, resume=True, progress=False)
    assert "reward" in first and "loss" in first
    assert {k: v for k, v in again.items() if k != "elapsed_s"} == {k: v for k, v in first.items() if k != "elapsed_s"}
    assert json.loads((tmp_path / "summary.json").read_text())["reward"] == first["reward"]
    # Fewer steps than the run has done: refused before config.yaml is rewritten (it said steps: 1 of a
    # 2-step run, and the run ended at step 2 anyway).
    config = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"steps=1 is fewer than the 2 the run has done already .*steps >= 2"):
        train_grpo(dataclasses.replace(cfg, steps=1), tmp_path, model=model, tokenizer=tok, task=DIGITS,
                   resume=True, progress=False)
    assert (tmp_path / "config.yaml").read_text() == config


def test_a_finished_run_without_periodic_checkpoints_can_be_extended(tmp_path):
    # save_every 0: a checkpoint at the end only, as for the other trainers; it was none, so the finished run
    # read as one stopped before its first checkpoint, and --resume trained it again from step 1
    torch.set_num_threads(1)
    cfg = GRPOConfig(steps=2, prompts_per_step=2, group_size=4, lr=1e-2, save_every=0)
    model, tok = load_model("qwen2-micro", seed=0)
    train_grpo(cfg, tmp_path, model=model, tokenizer=tok, task=DIGITS, progress=False)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000002"]
    first_rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    model, tok = load_model("qwen2-micro", seed=0)
    more = train_grpo(dataclasses.replace(cfg, steps=3), tmp_path, model=model, tokenizer=tok, task=DIGITS,
                      resume=True, progress=False)
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert more["steps"] == 3 and rows[:2] == first_rows and [json.loads(r)["step"] for r in rows] == [1, 2, 3]


def test_a_resume_with_other_training_rows_is_refused(tmp_path):
    torch.set_num_threads(1)
    cfg = GRPOConfig(steps=1, prompts_per_step=2, group_size=4, lr=1e-2, save_every=1)
    model, tok = load_model("qwen2-micro", seed=0)
    train_grpo(cfg, tmp_path, model=model, tokenizer=tok, task=DIGITS, progress=False)
    other = dataclasses.replace(DIGITS, train=[{**r, "prompt": r["prompt"] + "!"} for r in DIGITS.train])
    with pytest.raises(ConfigError, match="the training rows of task 'digits' differ from the data"):
        train_grpo(dataclasses.replace(cfg, steps=2), tmp_path, model=model, tokenizer=tok, task=other,
                   resume=True, progress=False)


def test_a_resume_whose_reference_has_other_weights_is_refused(tmp_path):
    # beta > 0: pi_ref is the policy as loaded, at every resume too; another model there changed pi_ref silently
    torch.set_num_threads(1)
    cfg = GRPOConfig(steps=1, prompts_per_step=2, group_size=4, lr=1e-2, save_every=1, beta=0.04)
    model, tok = load_model("qwen2-micro", seed=0)
    train_grpo(cfg, tmp_path, model=model, tokenizer=tok, task=DIGITS, progress=False)
    other, _ = load_model("qwen2-micro", seed=1)
    with pytest.raises(ConfigError, match="the reference pi_ref, the policy's weights as loaded for this resume, differs from the one"):
        train_grpo(dataclasses.replace(cfg, steps=2), tmp_path, model=other, tokenizer=tok, task=DIGITS,
                   resume=True, progress=False)
    same, _ = load_model("qwen2-micro", seed=0)
    assert train_grpo(dataclasses.replace(cfg, steps=2), tmp_path, model=same, tokenizer=tok, task=DIGITS,
                      resume=True, progress=False)["steps"] == 2
