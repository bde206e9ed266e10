"""Fixtures: every test runs in a temporary cache; `one_thread` for tiny tensors.

The helpers (tiny configs for both settings, training and resume helpers) live in tests/harness.py;
they are re-exported here so `from tests.conftest import tiny_cfg` keeps working.
"""
from __future__ import annotations

import pytest
import torch

pytest.register_assert_rewrite("tests.harness")  # its helpers assert (resume_equals_uninterrupted): full failure reports

from tests.harness import (ROOT, TINY_VLM, TWO_STEPS, cfg_for, copy_weights, metrics_without_timing,  # noqa: E402,F401
                           mmcl_cmd, pair, resume_equals_uninterrupted, run_cli, run_experience, scenario_cfg,
                           sigterm_at_loss, tiny_cfg, tiny_token_cfg, train_step, train_steps, trained, write_cfg)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # one cache per test session: real encoders' outputs are computed once, never in ~/.cache
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path_factory.getbasetemp() / "mmcl-cache"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: threads buy nothing, and on a shared machine they oversubscribe the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
