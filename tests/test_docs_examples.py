"""The Python examples in README.md and docs/ run as written, and their shell commands parse.

Every ```python block is classified below. "run" blocks take seconds and are executed whole, in a fresh
directory; "imports" blocks train for minutes, so they are parsed and their imports executed (every name
they import must exist); "signature" blocks list call signatures and are only checked for the names they
show. A new block must be added to the table, so no example goes unchecked by accident. Every documented
`gradascent` command line is parsed by the real parser, so a renamed or misspelt flag fails here.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

KIND = {
    ("README.md", 1): "run",        # gae + clipped_surrogate_loss on a 3-step batch
    ("classic.md", 1): "imports",   # PPO on CartPole for 100k steps
    ("classic.md", 2): "fragment",  # one resume line, continues the block above
    ("grpo.md", 1): "run",          # 5 GRPO steps on qwen2-micro with a custom reward
    ("lm.md", 1): "run",            # load, generate, log-probs, score, save, value and reward heads
    ("lm.md", 2): "signature",      # generate(...)
    ("lm.md", 3): "run",            # evaluate_model on 16 rows
    ("lm.md", 4): "signature",      # completion_logprobs / sequence_logprobs
    ("lm.md", 5): "run",            # oneDNN linears
    ("lm.md", 6): "imports",        # 1000 SFT steps
    ("rlhf.md", 1): "imports",      # the whole RLHF chain
    ("rlhf.md", 2): "run",          # stage fields changed with the chain's other defaults kept
}


def python_blocks():
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for n, code in enumerate(re.findall(r"^```python\n(.*?)^```", text, re.S | re.M), start=1):
            yield path.name, n, code


BLOCKS = {(name, n): code for name, n, code in python_blocks()}


def test_every_python_block_is_classified():
    assert set(BLOCKS) == set(KIND), (
        f"unclassified: {sorted(set(BLOCKS) - set(KIND))}; gone: {sorted(set(KIND) - set(BLOCKS))}")


@pytest.mark.parametrize("key", [k for k, v in KIND.items() if v == "run"], ids="{0[0]}#{0[1]}".format)
def test_example_runs(key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write runs/... relative to the working directory
    exec(compile(BLOCKS[key], f"{key[0]}#{key[1]}", "exec"), {"__name__": "__doc_example__"})


@pytest.mark.parametrize("key", [k for k, v in KIND.items() if v in ("imports", "fragment")],
                         ids="{0[0]}#{0[1]}".format)
def test_long_example_parses_and_its_imports_exist(key):
    tree = ast.parse(BLOCKS[key])
    imports = ast.Module(body=[s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))],
                         type_ignores=[])
    exec(compile(imports, f"{key[0]}#{key[1]}", "exec"), {})
    assert imports.body or KIND[key] == "fragment"


@pytest.mark.parametrize("key", [k for k, v in KIND.items() if v == "signature"], ids="{0[0]}#{0[1]}".format)
def test_signature_block_matches_the_functions(key):
    import inspect

    import gradascent.lm as lm

    signatures = re.findall(r"^(\w+)\((.*?)\)\s*->", BLOCKS[key], re.S | re.M)
    assert signatures, f"{key} shows no signature"
    for name, params in signatures:
        shown = {p.strip().split("=")[0] for p in params.split(",")} - {"*", ""}
        actual = set(inspect.signature(getattr(lm, name)).parameters)
        assert shown == actual, f"{key}: {name} shows {sorted(shown ^ actual)} differently from the code"


def shell_commands():
    """Every `gradascent ...` (or `-m gradascent.cli ...`) command of the docs' shell blocks, as argv."""
    import shlex

    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, re.S | re.M):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                for i, word in enumerate(words):
                    if word in ("gradascent", "gradascent.cli") and "--help" not in words:
                        yield path.name, words[i + 1:]
                        break


COMMANDS = list(shell_commands())


def test_docs_show_commands():
    assert len(COMMANDS) >= 40  # the shell examples above are found at all


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[f"{w}:{' '.join(a[:2])}" for w, a in COMMANDS])
def test_documented_command_parses(where, argv):
    from gradascent.cli import build_parser

    args = build_parser().parse_args(argv)  # an unknown flag or a bad value exits here, naming it
    assert getattr(args, "func", None), f"{where}: `gradascent {' '.join(argv)}` names no command"


YAML_CONFIG = {"rlhf.md": "gradascent.algos.rlhf:RLHFConfig"}  # which config each document's YAML shows


def test_documented_yaml_configs_load(tmp_path):
    import importlib

    from gradascent.run.config import load_config

    found = 0
    for path in DOCS:
        for n, block in enumerate(re.findall(r"^```ya?ml\n(.*?)^```", path.read_text(encoding="utf-8"),
                                             re.S | re.M), start=1):
            assert path.name in YAML_CONFIG, f"{path.name} shows a YAML block; name its config in YAML_CONFIG"
            module, cls = YAML_CONFIG[path.name].split(":")
            (tmp_path / f"{path.stem}_{n}.yaml").write_text(block, encoding="utf-8")
            load_config(getattr(importlib.import_module(module), cls), tmp_path / f"{path.stem}_{n}.yaml")
            found += 1
    assert found >= len(YAML_CONFIG)
