"""Runs that survive: SIGKILL then --resume, SIGTERM then --resume, both identical to a run that never stopped.

Each run is a real subprocess of the command line. "Identical" is bitwise: the final weights, and every
metrics row except the wall-clock fields (steps per second, wall time).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gradascent.algos.classic import WALL_CLOCK_METRICS
from gradascent.run import RunDir, latest_checkpoint

# One worker runs this module under `pytest -n 2 --dist loadgroup`, so the uninterrupted run is made once.
pytestmark = pytest.mark.xdist_group("classic-resume")

SRC = str(Path(__file__).resolve().parents[2] / "src")
UPDATES, STEPS_PER_UPDATE = 24, 4 * 32


def _command(out, *extra):
    return [sys.executable, "-m", "gradascent.cli", "rl", "ppo", "--env", "CartPole-v1", "--seed", "3",
            "--total-steps", str(UPDATES * STEPS_PER_UPDATE), "--num-envs", "4", "--num-steps", "32",
            "--save-every", "3", "--normalize-obs", "true", "--tensorboard", "false", "--no-progress",
            "--out", str(out), *extra]


def _env():
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(out, *extra):
    return subprocess.run(_command(out, *extra), env=_env(), capture_output=True, text=True, timeout=300)


def _start_and_signal(out, sig, ready):
    """Start a run, send ``sig`` as soon as ``ready(out)`` holds, return the finished process."""
    proc = subprocess.Popen(_command(out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready(out):
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "the run never became ready"
        time.sleep(0.005)
    os.kill(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def _rows(out):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_METRICS} for r in RunDir(out).read_metrics()]


def _assert_identical(a, b):
    rows_a, rows_b = _rows(a), _rows(b)
    assert len(rows_a) == UPDATES and rows_a == rows_b
    wa, wb = load_file(str(Path(a) / "policy.safetensors")), load_file(str(Path(b) / "policy.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    done = _run(out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_sigkill_then_resume_is_identical_to_the_uninterrupted_run(straight, tmp_path):
    out = tmp_path / "killed"
    rc, _, _ = _start_and_signal(out, signal.SIGKILL, lambda o: latest_checkpoint(o / "checkpoints") is not None)
    assert rc == -signal.SIGKILL
    resume_step = int(latest_checkpoint(out / "checkpoints").name.split("_")[1])
    assert 0 < resume_step < UPDATES
    done = _run(out, "--resume")
    assert done.returncode == 0, done.stderr
    _assert_identical(straight, out)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_resume_is_identical(straight, tmp_path):
    # SIGTERM as soon as the first update is logged: the checkpoint lands off the save_every grid (most
    # likely at update 1 or 2), so the resume goes through the environments' action-log replay.
    out = tmp_path / "terminated"
    rc, _, stderr = _start_and_signal(out, signal.SIGTERM, lambda o: bool(RunDir(o).read_metrics()))
    assert rc == 128 + signal.SIGTERM
    assert "gradascent rl ppo: stopped by SIGTERM" in stderr and f"continue with: gradascent resume {out}" in stderr
    step = int(latest_checkpoint(out / "checkpoints").name.split("_")[1])
    assert len(RunDir(out).read_metrics()) == step  # nothing logged after the checkpoint
    done = _run(out, "--resume")
    assert done.returncode == 0, done.stderr
    _assert_identical(straight, out)


def _damaged_copy(tmp_path, base, name, damage):
    """A copy of the finished run ``base`` whose newest checkpoint was damaged by ``damage(state, tensors)``."""
    import json as _json
    import shutil

    from safetensors.torch import save_file

    out = tmp_path / name
    shutil.copytree(base, out)
    ckpt = latest_checkpoint(out / "checkpoints")
    state = _json.loads((ckpt / "state.json").read_text())
    tensors = load_file(str(ckpt / "tensors.safetensors"))
    damage(state, tensors)
    (ckpt / "state.json").write_text(_json.dumps(state))
    save_file(tensors, str(ckpt / "tensors.safetensors"))
    return out


def _tensor_key(tensors, part):
    return next(k for k in tensors if part in k)


@pytest.mark.parametrize("name, damage, message", [
    ("counter", lambda s, t: s["state"].update(env_steps="lots"), "ValueError: invalid literal for int()"),
    ("shape", lambda s, t: t.update({_tensor_key(t, "actor_head.weight"): torch.zeros(3, 64)}),
     "size mismatch for actor_head.weight"),
    ("nan", lambda s, t: t[_tensor_key(t, "actor_head.weight")].view(-1).__setitem__(0, float("nan")),
     "holds NaN or inf, which save_checkpoint never writes"),
])
def test_a_damaged_checkpoint_is_a_checkpoint_error_naming_it(straight, tmp_path, name, damage, message):
    from gradascent.algos.presets import classic_config, get_algo
    from gradascent.errors import CheckpointError

    out = _damaged_copy(tmp_path, straight, name, damage)
    ckpt = latest_checkpoint(out / "checkpoints")
    config_before = (out / "config.yaml").read_text()
    cfg = classic_config("ppo", "CartPole-v1", path=out / "config.yaml",
                         overrides={"total_steps": 2 * UPDATES * STEPS_PER_UPDATE})
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt}") as err:
        get_algo("ppo").module.train(cfg, out=out, resume=True, progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert (out / "config.yaml").read_text() == config_before  # refused before anything was written


@pytest.mark.parametrize("damage", ["summary not json", "summary a list", "no policy"])
def test_a_finished_run_with_damaged_outputs_writes_them_again(straight, tmp_path, damage):
    import json as _json
    import shutil
    import warnings

    from gradascent.algos.presets import classic_config, get_algo
    from gradascent.errors import GradascentWarning

    out = tmp_path / "run"
    shutil.copytree(straight, out)
    summary = _json.loads((out / "summary.json").read_text())
    if damage == "no policy":
        (out / "policy.safetensors").unlink()
    else:
        (out / "summary.json").write_text("{bad" if damage == "summary not json" else "[1, 2]")
    cfg = classic_config("ppo", "CartPole-v1", path=out / "config.yaml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = get_algo("ppo").module.train(cfg, out=out, resume=True, progress=False)
    assert any(issubclass(w.category, GradascentWarning) and "outputs are damaged" in str(w.message) for w in caught)
    same = ("eval_return_mean", "eval_return_std", "env_steps", "updates", "reached")
    assert {k: again[k] for k in same} == {k: summary[k] for k in same}  # the final checkpoint's, evaluated again
    _assert_identical(straight, out)
