"""Thin trainers, one frozen config dataclass each, reading top to bottom."""
