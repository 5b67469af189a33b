"""The smoke experiment, run once per test session and read by several modules."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_workflow import SMOKE, snakemake


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> Path:
    """A folder in which the smoke config ran end to end (results, reports, .snakemake)."""
    workdir = tmp_path_factory.mktemp("smoke")
    result = snakemake(workdir, "--cores", "2", "--configfile", str(SMOKE))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return workdir
