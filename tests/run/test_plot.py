"""gradascent plot: PNGs from one or several runs; clear errors for what is not a run."""

import json

from gradascent.cli import main
from gradascent.run import RunDir


def _fake_run(path, scale):
    run = RunDir(path, tensorboard=False)
    for step in range(1, 6):
        run.log(step, {"env_steps": step * 100, "episode_return": scale * step, "approx_kl": 0.01 * step,
                       "entropy": 1.0 / step, "policy_loss": -0.1 * step, "clipfrac": 0.02 * step})
    return path


def test_plot_two_runs_writes_pngs(tmp_path, capsys):
    a, b = _fake_run(tmp_path / "a", 1.0), _fake_run(tmp_path / "b", 2.0)
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "plots")]) == 0
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["clip_fraction.png", "entropy.png", "kl.png", "loss.png", "overview.png", "return.png"]
    for p in (tmp_path / "plots").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing does not exist" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    assert main(["plot", str(tmp_path / "bad")]) == 2
    assert "metrics.jsonl:2 is not a JSON object" in capsys.readouterr().err
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "metrics.jsonl").write_text('[1, 2]\n[3, 4]\n')  # JSON, but no rows of a run
    assert main(["plot", str(tmp_path / "lists")]) == 2
    assert "metrics.jsonl:1 is not a JSON object (it holds a list)" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "none of the runs logged a metric" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "plots").exists()  # a failed plot leaves no empty plots/ behind


def test_runs_of_one_name_and_directories_of_runs(tmp_path):
    from gradascent.run.plot import expand_runs, plot_runs

    a, b = _fake_run(tmp_path / "x" / "grpo", 1.0), _fake_run(tmp_path / "y" / "grpo", 2.0)
    _fake_run(tmp_path / "x" / "sft", 3.0)
    assert expand_runs([tmp_path / "x"]) == [tmp_path / "x" / "grpo", tmp_path / "x" / "sft"]  # a demo's runs
    chain = tmp_path / "chain"  # an rlhf chain: its own metrics.jsonl (a row per stage) beside its stages'
    for stage in ("sft", "rm", "ppo"):
        _fake_run(chain / stage, 1.0)
    _fake_run(chain, 1.0)
    assert expand_runs([chain]) == [chain / "ppo", chain / "rm", chain / "sft"]
    assert expand_runs([a]) == [a]  # a run is itself
    import matplotlib

    matplotlib.use("Agg")
    from unittest import mock

    with mock.patch("gradascent.run.plot._draw") as draw:
        plot_runs([a, b], tmp_path / "cmp")
    labels = {name for call in draw.call_args_list for name, *_ in call.args[2]}
    assert labels == {str(a), str(b)}  # both lines kept, told apart by their paths


def test_an_sft_run_is_drawn_with_its_validation_reward_and_loss(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from unittest import mock

    from gradascent.run.plot import plot_runs

    sft = RunDir(tmp_path / "demo" / "sft", tensorboard=False)  # what SFT logs: no training reward
    for step in range(1, 7):
        row = {"loss": 1.0 / step, "lr": 1e-3, "tokens": 10 * step}
        if step % 3 == 0:
            row |= {"eval/loss": 1.5 / step, "eval/reward": 0.1 * step, "eval/reward/exact_match": 0.1 * step}
        sft.log(step, row)
    grpo = RunDir(tmp_path / "demo" / "grpo", tensorboard=False)
    for step in range(1, 4):
        grpo.log(step, {"reward": 0.5 + 0.1 * step, "loss": 0.1, "kl": 0.01 * step, "entropy": 0.5})
    with mock.patch("gradascent.run.plot._draw") as draw:
        plot_runs([tmp_path / "demo"], tmp_path / "plots")
    drawn = {call.args[1]: [(name, key, xs) for name, key, xs, _ in call.args[2]] for call in draw.call_args_list}
    assert drawn["return"] == [("grpo", "reward", [1, 2, 3]), ("sft", "eval/reward", [3, 6])]
    assert drawn["loss"] == [("grpo", "loss", [1, 2, 3]), ("sft", "loss", [1, 2, 3, 4, 5, 6]), ("sft", "eval/loss", [3, 6])]
