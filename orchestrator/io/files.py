"""The controller's own files and environment variables, as the pure core takes them."""

from __future__ import annotations

import os

from orchestrator.core.specs import Sources
from orchestrator.limits import read_bounded


def local_sources() -> Sources:
    """Secret and config contents from this machine: files by a bounded read
    (orchestrator.limits.read_bounded), variables from os.environ."""
    return Sources(read_file=read_bounded, environ=os.environ)
