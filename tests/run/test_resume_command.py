"""`gradascent resume DIR` on a real classic run: continuing from the first checkpoint ends where the
uninterrupted run ended (metrics rows and final policy bytes), with the trainer found through run.json."""

import json
import shutil

import pytest

from gradascent.cli import main
from gradascent.run.checkpoint import list_checkpoints

pytestmark = pytest.mark.xdist_group("rl-resume")

WALL = ("sps", "wall_seconds", "eval_seconds")


def _rows(path):
    return [{k: v for k, v in json.loads(line).items() if k not in WALL}
            for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_resume_command_continues_a_classic_run_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # The rollout shape is pinned (4 copies x 64 steps = 256 per update: 16 updates, checkpoints at 4, 8, 12,
    # 16) so that the test does not depend on the CartPole preset.
    assert main(["rl", "ppo", "--env", "CartPole-v1", "--total-steps", "4096", "--save-every", "4",
                 "--num-envs", "4", "--num-steps", "64",
                 "--seed", "3", "--out", str(a)]) == 0
    shutil.copytree(a, b)
    first, *later = list_checkpoints(b / "checkpoints")
    assert later, "the run should have written more than one checkpoint"
    for ckpt in later:  # as if the run had been killed right after its first checkpoint
        shutil.rmtree(ckpt)
    (b / "policy.safetensors").unlink()
    assert main(["resume", str(b)]) == 0
    assert _rows(b) == _rows(a)
    assert (b / "policy.safetensors").read_bytes() == (a / "policy.safetensors").read_bytes()
