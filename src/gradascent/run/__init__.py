"""What every run shares: config loading, the run directory, checkpoints, progress."""

from gradascent.run.checkpoint import (
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    seed_everything,
)
from gradascent.run.config import field_docs, from_dict, load_config, require, to_dict
from gradascent.run.rundir import RunDir

__all__ = [
    "RunDir",
    "capture_rng",
    "field_docs",
    "from_dict",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "require",
    "restore_rng",
    "save_checkpoint",
    "seed_everything",
    "to_dict",
]
