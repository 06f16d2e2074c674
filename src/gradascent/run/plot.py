"""Standard curves of one or several runs, drawn from their metrics.jsonl into PNG files.

    gradascent plot runs/a runs/b --out plots/

writes one PNG per panel (``return.png``: episode return, reward or accuracy; ``kl.png``, ``entropy.png``,
``loss.png``, ``clip_fraction.png``; and ``overview.png`` with all of them), for the panels that some run
logged; each run a line, labelled by its directory name (by its path where two names agree). The x axis is
the first counter the runs share among env_steps, samples, step. A directory of several runs (a demo, an
rlhf chain) stands for the runs in it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gradascent.errors import GradascentError
from gradascent.run.rundir import make_dir

# Panel title -> metric names to draw, first present wins for each run (several per panel allowed).
PANELS: dict[str, tuple[str, ...]] = {
    # SFT logs no training reward: its validation reward (eval/reward, on the eval_every steps) stands for it
    "return": ("episode_return", "eval_return_mean", "reward", "reward_mean", "rm_score", "accuracy", "eval/reward"),
    "kl": ("kl", "kl_to_reference", "approx_kl"),
    "entropy": ("entropy",),
    "loss": ("policy_loss", "loss", "value_loss", "train_loss", "eval_loss", "eval/loss"),
    "clip fraction": ("clipfrac", "clipfrac_high", "clipfrac_low"),
}
X_KEYS = ("env_steps", "samples", "step")


def expand_runs(run_dirs: list[str | Path]) -> list[Path]:
    """The run directories meant: the runs directly inside each directory (a demo's sft/ and grpo/, an rlhf
    chain's stages, in name order) where it holds some, or else the directory itself. An rlhf chain's own
    metrics.jsonl (one row per stage) is no curve, and stands aside for its stages'."""
    runs: list[Path] = []
    for d in map(Path, run_dirs):
        if not d.exists():
            raise GradascentError(f"{d} does not exist")
        inner = sorted(p for p in d.iterdir() if (p / "metrics.jsonl").is_file()) if d.is_dir() else []
        runs.extend(inner or [d])
    return runs


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``run_dir/metrics.jsonl``; a half-written last line (a killed run) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise GradascentError(f"{run_dir} is not a run directory: {path.name} is missing")
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GradascentError(f"{path} is not a text file") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(text.splitlines()):
                break
            raise GradascentError(f"{path}:{lineno} is not a JSON object") from None
        if not isinstance(row, dict):  # a row of a run is an object {"step": ..., metric: value}
            raise GradascentError(f"{path}:{lineno} is not a JSON object (it holds a {type(row).__name__})")
        rows.append(row)
    return rows


def _series(rows: list[dict[str, Any]], x_key: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and x_key in r:
            xs.append(r[x_key])
            ys.append(v)
    return xs, ys


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Draw the standard panels for ``run_dirs`` into ``out_dir``; returns the PNG files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise GradascentError("plot needs at least one run directory")
    paths = expand_runs(run_dirs)
    names = [p.name or str(p) for p in paths]
    if len(set(names)) < len(names):  # two runs of one name (a/grpo, b/grpo): label them by their paths
        names = [str(p) for p in paths]
    runs = {name: read_metrics(p) for name, p in zip(names, paths)}
    x_key = next((k for k in X_KEYS if all(any(k in r for r in rows) for rows in runs.values())), "step")
    drawn: dict[str, list[tuple[str, str, list[float], list[float]]]] = {}
    for title, keys in PANELS.items():
        for name, rows in runs.items():
            for key in keys:
                xs, ys = _series(rows, x_key, key)
                if xs:
                    drawn.setdefault(title, []).append((name, key, xs, ys))
                    if title in ("return", "kl"):
                        break  # one measure per run for these panels
    if not drawn:
        raise GradascentError("none of the runs logged a metric that can be plotted")
    out = make_dir(out_dir, "plot directory")  # only once there is something to draw: a failure leaves none
    written: list[Path] = []
    for title, lines in drawn.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw(ax, title, lines, x_key, len(runs))
        path = out / f"{title.replace(' ', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.5 * len(drawn), 3.6), squeeze=False)
    for ax, (title, lines) in zip(axes[0], drawn.items()):
        _draw(ax, title, lines, x_key, len(runs))
    fig.tight_layout()
    overview = out / "overview.png"
    fig.savefig(overview, dpi=90)
    plt.close(fig)
    written.append(overview)
    return written


def _draw(ax: Any, title: str, lines: list[tuple[str, str, list[float], list[float]]], x_key: str, n_runs: int) -> None:
    keys = list(dict.fromkeys(k for _, k, _, _ in lines))
    for name, key, xs, ys in lines:
        label = name if n_runs > 1 and len(keys) == 1 else f"{name}: {key}"
        ax.plot(xs, ys, label=label, linewidth=1.2, marker="o" if len(xs) == 1 else None)  # one point: a dot
    ax.set_title(title)
    ax.set_xlabel(x_key)
    ax.set_ylabel(", ".join(keys) if len(keys) <= 2 else title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("plot", parents=[common], help="draw the standard curves of runs into PNG files",
                       description="Draw return/reward, KL, entropy, loss and clip-fraction curves of one or "
                                   "several run directories into PNG files, one line per run.")
    p.add_argument("runs", nargs="+", metavar="DIR", help="run directories (each with metrics.jsonl)")
    p.add_argument("--out", default=None, help="where to write the PNGs [default: DIR/plots for one run, "
                                               "./plots for several]")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    out = args.out or (str(Path(args.runs[0]) / "plots") if len(args.runs) == 1 else "plots")
    for path in plot_runs(args.runs, out):
        print(path)
    return 0
