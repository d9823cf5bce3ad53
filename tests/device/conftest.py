from __future__ import annotations

import pytest
from support.bed import resource_counts


@pytest.fixture(autouse=True)
def no_leaks():
    """Every device test must give back its QPs, CQs, MRs, PDs and fds."""
    before = resource_counts()
    yield
    after = resource_counts()
    assert after == before, f"verbs resources or fds leaked: before {before}, after {after}"
