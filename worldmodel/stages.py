"""The stages of a registered model version (``worldmodel.registry``).

Plain Python (no torch), so ``wm models --help`` builds its options from these at once.
"""

STAGES = ("candidate", "shadow", "production", "archived")
"""Every stage a version can be in: waiting, planned beside production, serving, retired."""
PROMOTABLE = ("production", "shadow")
"""Stages ``promote`` moves a version to; each is held by at most one version at a time."""
