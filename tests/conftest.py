"""Shared fixtures: a tiny ForenSynths-layout tree that tests can train on in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_data import make_tiny_forensynths

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_forensynths(tmp_path_factory.mktemp("tiny_forensynths"))
