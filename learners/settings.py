"""Learner and scheduler defaults, in plain Python so the command line reads them without Ray."""

DEFAULT_NAME = "fleetwm-retrain-scheduler"
"""Name of the detached retrain scheduler actor."""
DEFAULT_CHECKPOINT_ROOT = "~/.cache/fleetwm/learner"
"""Where the scheduler's learner checkpoints (on the learner's node; ``~`` is that node's home)."""
