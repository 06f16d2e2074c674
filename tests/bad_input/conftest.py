"""The bad-input harness: run a CLI command in a real subprocess and check how it fails.

Every failure must: exit with a non-zero code, print exactly one line on stderr (the error, naming the
culprit), print no traceback (unless --debug), and leave every existing checkpoint byte-for-byte as it was.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (relative names)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "gradascent.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def fails_cleanly(tmp_path):
    """fails_cleanly(args, must_name, protect=None): run, then assert the clean-failure contract."""

    def check(args: list[str], must_name: str, protect: Path | None = None) -> str:
        before = tree_digest(protect) if protect else None
        proc = run_cli(args, cwd=tmp_path)
        err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode != 0, f"exit 0 for bad input {args}: {proc.stdout[-500:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert len(err_lines) == 1, f"expected one error line, got:\n{proc.stderr[-2000:]}"
        assert must_name in err_lines[0], f"{must_name!r} not named in: {err_lines[0]}"
        if protect is not None:
            assert tree_digest(protect) == before, "an existing checkpoint changed"
        return err_lines[0]

    return check
