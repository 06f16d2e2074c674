"""docs/classic.md documents every config field and every packaged preset."""

import dataclasses
from pathlib import Path

from gradascent.algos.presets import ALGOS
from gradascent.run.config import field_docs

DOC = (Path(__file__).resolve().parents[2] / "docs" / "classic.md").read_text(encoding="utf-8")
PRESETS = Path(__file__).resolve().parents[2] / "src" / "gradascent" / "presets"


def test_every_config_field_has_a_docstring_and_a_row_in_the_docs():
    for spec in ALGOS.values():
        docs = field_docs(spec.config)
        for f in dataclasses.fields(spec.config):
            assert docs.get(f.name), f"{spec.config.__name__}.{f.name} has no docstring"
            assert f"| `{f.name}` |" in DOC, f"docs/classic.md has no row for {f.name}"


def test_every_preset_is_listed_and_loads():
    from gradascent.algos.presets import classic_config

    classic = [(path, algo) for path in sorted(PRESETS.glob("*.yaml"))
               for algo in [next((a for a in sorted(ALGOS, key=len, reverse=True)
                                  if path.stem.startswith(a + "-")), None)] if algo]
    assert len(classic) >= 5
    for path, algo in classic:
        env = path.stem[len(algo) + 1:]
        assert f"`{path.name}`" in DOC
        assert classic_config(algo, env).env == env
