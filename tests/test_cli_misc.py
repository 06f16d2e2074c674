"""The command line around the trainers: `plot` and `demo` with an --out they cannot write, and `rlhf --help`
without the stage flags the chain sets itself."""

import pytest

from gradascent.algos.rlhf import CHAIN_FIELDS
from gradascent.cli import main
from gradascent.run import RunDir


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("gradascent: error: "), err  # no traceback
    return err


@pytest.fixture
def run_dir(tmp_path):
    run = RunDir(tmp_path / "run", tensorboard=False)
    for step in (1, 2):
        run.log(step, {"reward": 0.5 * step})
    return run.path


def test_plot_into_a_file_or_an_impossible_path_is_a_one_line_error(run_dir, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "a_file")]) == 2
    assert _one_line_error(capsys) == (f"gradascent: error: cannot create plot directory {tmp_path / 'a_file'}: a "
                                       "file is in the way (a directory is needed)")
    too_long = str(tmp_path / ("x" * 300))  # longer than any file system allows a name: OSError, even for root
    assert main(["plot", str(run_dir), "--out", too_long]) == 2
    assert _one_line_error(capsys) == f"gradascent: error: cannot create plot directory {too_long}: File name too long"
    (run_dir / "plots").write_text("")  # in the way of the default --out, RUN/plots
    assert main(["plot", str(run_dir)]) == 2
    assert _one_line_error(capsys) == (f"gradascent: error: cannot create plot directory {run_dir / 'plots'}: a "
                                       "file is in the way (a directory is needed)")


def test_demo_into_a_file_is_a_one_line_error_before_any_training(tmp_path, capsys):
    out = tmp_path / "a_file"
    out.write_text("")
    assert main(["demo", "--out", str(out)]) == 2
    assert _one_line_error(capsys) == (f"gradascent: error: cannot create demo directory {out}: a "
                                       "file is in the way (a directory is needed)")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("")  # a directory of something else: not taken over
    assert main(["demo", "--out", str(tmp_path / "other")]) == 2
    assert "already exists and holds no demo (no demo.json)" in _one_line_error(capsys)
    (tmp_path / "other" / "summary.json").write_text("{}")  # a finished run of another command, not a demo
    assert main(["demo", "--out", str(tmp_path / "other")]) == 2
    assert "already exists and holds no demo (no demo.json)" in _one_line_error(capsys)


def test_rlhf_help_leaves_out_the_flags_the_chain_sets_but_refuses_them(capsys):
    with pytest.raises(SystemExit):
        main(["rlhf", "--help"])
    shown = capsys.readouterr().out
    chained = [f"--{section}.{f.replace('_', '-')}" for section, fields in CHAIN_FIELDS.items() for f in fields]
    assert len(chained) == 15
    for flag in chained:
        assert f"{flag} " not in shown and f"{flag}]" not in shown, flag
    assert "--sft.model " in shown and "--ppo.kl-coef " in shown  # the stages' other flags are still listed
    assert main(["rlhf", "--sft.out", "x"]) == 2
    assert "config key 'sft.out' (a flag) is set by the rlhf chain" in _one_line_error(capsys)
    # also at the stage's default value, which the chain would silently replace (the chain's task here)
    assert main(["rlhf", "--sft.task", "arithmetic"]) == 2
    assert "config key 'sft.task' (a flag) is set by the rlhf chain" in _one_line_error(capsys)


def test_rlhf_config_file_refuses_the_keys_the_chain_sets_even_at_their_defaults(tmp_path, capsys):
    path = tmp_path / "rlhf.yaml"
    path.write_text("out: runs/x\nsft:\n  task: arithmetic\n  steps: 3\n")
    assert main(["rlhf", "--config", str(path)]) == 2
    assert f"config key 'sft.task' ({path}) is set by the rlhf chain" in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["--debug", "plot", "nowhere"], ["plot", "nowhere", "--debug"]])
def test_debug_before_or_after_the_command_shows_the_traceback(argv, tmp_path, monkeypatch):
    from gradascent.errors import GradascentError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(GradascentError, match="nowhere does not exist"):
        main(argv)
    assert main(["plot", "nowhere"]) == 2  # without it, the one-line error


def test_ctrl_c_while_the_commands_load_is_one_line(monkeypatch, capsys):
    import gradascent.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["grpo"]) == 130
    assert capsys.readouterr().err == "gradascent: interrupted\n"


@pytest.mark.parametrize("argv, what", [
    (["rl", "ppo", "--total-steps", "64"], "rl ppo"),
    (["demo"], "demo"),
    (["generate", "qwen2-micro", "--prompt", "1+1="], "generate"),
    (["eval", "qwen2-micro", "--task", "arithmetic"], "eval"),
])
def test_one_process_commands_refuse_torchrun(tmp_path, monkeypatch, capsys, argv, what):
    # Under torchrun every copy would write the same run directory (or print the same result).
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = ["--out", str(tmp_path / "run")] if argv[0] in ("rl", "demo") else []
    assert main([*argv, *out]) == 2
    err = capsys.readouterr().err
    assert f"{what} runs in one process, and torchrun started 2; launch it without torchrun" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["rl", "ppo"], ["grpo"]])
def test_resume_takes_a_bool_as_the_config_flags_do(argv, capsys):
    from gradascent.cli import build_parser

    parser = build_parser()
    for given, expected in ((["--resume"], True), (["--resume", "true"], True), (["--resume", "no"], False), ([], False)):
        assert parser.parse_args([*argv, *given]).resume is expected
    with pytest.raises(SystemExit):
        main([*argv, "--resume", "maybe"])
    assert "argument --resume: 'maybe' is not a bool (true/false, yes/no, 1/0)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["sft", "--stpes", "3"], "gradascent sft: error: unrecognized arguments: --stpes 3 (--stpes: did you mean "
                              "--steps?) (see gradascent sft --help)"),
    (["rl", "ppo", "--totl-steps=3"], "gradascent rl ppo: error: unrecognized arguments: --totl-steps=3 "
                                      "(--totl-steps: did you mean --total-steps?) (see gradascent rl ppo --help)"),
    (["grpo", "--zzz"], "gradascent grpo: error: unrecognized arguments: --zzz (see gradascent grpo --help)"),
    (["rlhf", "--ppo.checkpoint-every=3"], "gradascent rlhf: error: unrecognized arguments: --ppo.checkpoint-every=3 "
                                           "(--ppo.checkpoint-every is now --ppo.save-every) (see gradascent rlhf --help)"),
    (["sft", "--grad-clip", "1"], "gradascent sft: error: unrecognized arguments: --grad-clip 1 (--grad-clip is now "
                                  "--max-grad-norm) (see gradascent sft --help)"),
])
def test_a_misspelt_flag_is_named_with_the_closest_flag_of_its_command(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == expected


@pytest.mark.parametrize("argv, shown", [
    (["sft", "--lr", "-1e-3"], "-0.001"),  # argparse alone: "argument --lr: expected one argument"
    (["rl", "ppo", "--lr", "-2.5E+1"], "-25.0"),
    (["grpo", "--lr", "-inf"], "-inf"),
    (["sft", "--lr", "-0.5"], "-0.5"),  # argparse's own pattern, as before
])
def test_a_negative_number_in_any_form_is_a_value_for_the_config_check(argv, shown, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gradascent: error: config key 'lr': {shown} is not allowed; expected "), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["sft"], ["rm"], ["ppo"], ["grpo"], ["rl", "ppo"], ["demo"]])
def test_every_training_command_takes_progress_false(argv, monkeypatch):
    # sft had a progress field, rl --no-progress only, and rm, ppo, grpo and demo no way at all
    from gradascent.cli import build_parser
    from gradascent.run.config import flag_values

    args = build_parser().parse_args([*argv, "--progress", "false"])
    value = args.progress if hasattr(args, "progress") else flag_values(args)["progress"]
    assert value in (False, "false")


def test_progress_true_reaches_the_bar_of_rm_and_grpo(tmp_path, monkeypatch):
    from gradascent.algos import grpo, reward_model

    seen = []
    for module in (grpo, reward_model):
        real = module.progress_bar
        monkeypatch.setattr(module, "progress_bar",
                            lambda *a, real=real, **k: seen.append(k.get("enabled")) or real(*a, **k))
    assert main(["rm", "--model", "qwen2-micro", "--train-pairs", "8", "--eval-pairs", "4", "--batch-size", "4",
                 "--progress", "true", "--out", str(tmp_path / "rm")]) == 0
    assert main(["grpo", "--model", "qwen2-micro", "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                 "--progress", "--out", str(tmp_path / "grpo")]) == 0
    assert seen == [True, True]  # shown although the test's stderr is no terminal
