"""gradascent: policy optimization from REINFORCE to GRPO."""

__version__ = "0.1.0"
