"""Shared fixtures: small synthetic table sets made by the tests themselves."""

from __future__ import annotations

import pytest
import torch

from longtail.data.synthetic import SyntheticConfig, build_synthetic


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One torch thread per test: the test models are tiny, and on a busy 2-core machine two
    contending threads are many times slower than one (training itself also defaults to one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_tables(tmp_path_factory):
    """A small synthetic table set (6 scenarios, 1500 down to 60 rows)."""
    root = tmp_path_factory.mktemp("synthetic") / "tables"
    return build_synthetic(root, SyntheticConfig(n_scenarios=6, max_rows=1500, min_rows=60, seed=0))


@pytest.fixture(scope="session")
def synthetic_frame(synthetic_tables):
    from longtail.data.tables import point_in_time_join

    return point_in_time_join(synthetic_tables)
