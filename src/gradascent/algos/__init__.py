"""Thin trainers, one config dataclass each: collect -> advantages -> epochs of minibatches -> log."""
