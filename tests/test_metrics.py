"""TokenWeightedMean: the token-weighted epoch and validation loss."""

import math

import pytest
import torch

from llm_scratch.train.metrics import TokenWeightedMean


def test_token_weighted_mean():
    metric = TokenWeightedMean()
    metric.update(torch.tensor(2.0), 3)
    metric.update(torch.tensor(4.0, requires_grad=True), 1)
    value = metric.compute()
    assert value.item() == pytest.approx((2.0 * 3 + 4.0 * 1) / 4)
    assert not value.requires_grad
    metric.reset()
    metric.update(torch.tensor(1.5), 8)
    assert metric.compute().item() == pytest.approx(1.5)


def test_nan_propagates():
    metric = TokenWeightedMean()
    metric.update(torch.tensor(1.0), 4)
    metric.update(torch.tensor(float("nan")), 4)
    assert math.isnan(metric.compute().item())
    metric.reset()
    metric.update(torch.tensor(1.0), 4)
    assert metric.compute().item() == pytest.approx(1.0)


def test_update_reads_nothing_back(monkeypatch):
    """An update only adds on the device: no tensor is turned into a Python value."""
    metric = TokenWeightedMean()

    def refuse(*args, **kwargs):
        raise AssertionError("update read a tensor back to the host")

    for name in ("__bool__", "item", "tolist", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    metric.update(torch.tensor(2.0), 3)
    monkeypatch.undo()
    assert metric.compute().item() == pytest.approx(2.0)


def test_sums_are_saved_and_old_state_dicts_still_load():
    """A checkpoint saved mid-epoch carries the epoch's sums; one saved before they were loads."""
    metric = TokenWeightedMean()
    metric.update(torch.tensor(2.0), 3)
    state = metric.state_dict()
    assert set(state) == {"total", "count"}
    restored = TokenWeightedMean()
    restored.load_state_dict(state)
    restored.update(torch.tensor(4.0), 1)
    assert restored.compute().item() == pytest.approx((2.0 * 3 + 4.0) / 4)
    older = TokenWeightedMean()
    older.load_state_dict({}, strict=True)
    older.update(torch.tensor(4.0), 1)
    assert older.compute().item() == pytest.approx(4.0)
