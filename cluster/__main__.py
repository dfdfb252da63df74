"""`python -m cluster`: the `wm` command line."""

from cluster.cli import entry

entry()
