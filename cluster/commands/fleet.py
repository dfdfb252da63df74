"""Placeholder: filled in by the issue-4/5 work (registers no subcommand yet)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    return None
