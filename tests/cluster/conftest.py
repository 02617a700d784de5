"""Fixtures of the cluster tests (helpers live in join_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from join_helpers import Launcher


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """Start join processes with `launcher.start(...)`; all are killed after the test."""
    launch = Launcher(tmp_path)
    try:
        yield launch
    finally:
        launch.kill_all()
