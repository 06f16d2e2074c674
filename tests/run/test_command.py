"""run.command.finish: the one line a training command prints, and its exit status."""

from gradascent.run.command import STOPPED, finish


def test_a_finished_run_prints_its_line_and_exits_0(capsys):
    assert finish("rm", {"accuracy": 0.75}, lambda s: f"rm: accuracy {s['accuracy']:.2f}") == 0
    out, err = capsys.readouterr()
    assert out == "rm: accuracy 0.75\n" and err == ""


def test_a_stopped_run_says_so_on_stderr_and_exits_130(capsys):
    summary = {"stopped": "stopped by SIGTERM after step 3; run the same command again to resume"}
    assert finish("ppo", summary, lambda s: "never printed") == STOPPED == 130
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "gradascent ppo: stopped by SIGTERM after step 3; run the same command again to resume\n"


def test_the_exit_status_is_128_plus_the_signal_that_stopped_the_run(capsys):
    from gradascent.run.command import stop_message, stop_status

    assert finish("ppo", {"stopped": "stopped by SIGTERM after update 2", "stopped_by": "SIGTERM"},
                  lambda s: "") == 143
    assert stop_status({"stopped_by": "SIGINT"}) == 130
    assert stop_status({"stopped_by": "a signal to another process"}) == 130
    assert stop_message({"stopped_by": "SIGTERM", "steps": 7}) == "stopped by SIGTERM after step 7"
    assert stop_message({"steps": 7}) is None
