"""Optimizers: AdamW choice and fallback, and stepping each weight inside the backward pass."""

import pytest
import torch

from lib_dbchar.train.config import TrainConfig
from lib_dbchar.train.optim import StepInBackward, adamw_options, build_optimizer, build_scaler, torch_adamw


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))


def _batches(n=4):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 6, generator=gen), torch.randn(5, 3, generator=gen)) for _ in range(n)]


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def _train_whole(model, config):
    optimizer = torch_adamw(list(model.parameters()), adamw_options(config))
    for x, y in _batches():
        _loss(model, x, y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model


def _train_in_backward(model, config, loss_scale=None):
    options = adamw_options(config)
    optimizer = StepInBackward(
        list(model.parameters()), lambda p: torch_adamw(p, options), loss_scale=loss_scale
    )
    for x, y in _batches():
        optimizer.backward(_loss(model, x, y))
        assert all(p.grad is None for p in model.parameters())  # no gradient outlives its step
    return model, optimizer


def test_stepping_in_backward_gives_the_same_weights():
    config = TrainConfig(learning_rate=1e-2, max_grad_norm=0.0)
    whole = _train_whole(_model(), config)
    inside, _ = _train_in_backward(_model(), config)
    for a, b in zip(whole.parameters(), inside.parameters(), strict=True):
        assert torch.equal(a, b)
    # A power-of-two loss scale is undone exactly.
    scaled, optimizer = _train_in_backward(_model(), config, loss_scale=2.0**16)
    for a, b in zip(whole.parameters(), scaled.parameters(), strict=True):
        assert torch.equal(a, b)
    assert optimizer.loss_scale == 2.0**16 and optimizer.clean_steps == 4


def test_overflow_skips_the_step_and_halves_the_scale():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = StepInBackward(
        list(model.parameters()), lambda p: torch.optim.AdamW(p, lr=1e-2), loss_scale=2.0**127
    )
    x, y = _batches(1)[0]
    optimizer.backward(_loss(model, x, y) * 1e10)
    assert optimizer.overflowed == len(before) and optimizer.loss_scale == 2.0**126
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_state_round_trip_and_mismatch():
    config = TrainConfig(learning_rate=1e-2)
    _, optimizer = _train_in_backward(_model(), config, loss_scale=8.0)
    state = optimizer.state_dict()
    fresh = StepInBackward(list(_model().parameters()), lambda p: torch_adamw(p, adamw_options(config)))
    fresh.load_state_dict(state)
    assert fresh.loss_scale == 8.0 and fresh.clean_steps == 4
    assert fresh.optimizers[0].state_dict()["state"][0]["step"] == 4
    small = StepInBackward(
        [torch.nn.Parameter(torch.zeros(2))], lambda p: torch_adamw(p, adamw_options(config))
    )
    with pytest.raises(ValueError, match="covers 4 tensors, this run trains 1"):
        small.load_state_dict(state)


def test_build_optimizer_and_scaler_choices():
    params = list(_model().parameters())
    optimizer, name, message = build_optimizer(params, TrainConfig(use_8bit_adam=False), min_8bit_size=0)
    assert isinstance(optimizer, torch.optim.AdamW) and name == "AdamW" and message == ""
    optimizer, name, _ = build_optimizer(
        params, TrainConfig(use_8bit_adam=False, optimizer_in_backward=True, mixed_precision="fp16"),
        min_8bit_size=0, device="cuda",
    )  # fmt: skip
    assert isinstance(optimizer, StepInBackward) and optimizer.loss_scale == 2.0**16
    assert name == "AdamW, stepped in backward"
    assert build_scaler(TrainConfig(mixed_precision="fp16"), "cpu") is None
    assert build_scaler(TrainConfig(mixed_precision="fp16", optimizer_in_backward=True), "cuda") is None


def test_missing_bitsandbytes_falls_back_with_a_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    optimizer, name, message = build_optimizer(list(_model().parameters()), TrainConfig(), min_8bit_size=0)
    assert isinstance(optimizer, torch.optim.AdamW) and name == "AdamW"
    assert "8-bit Adam is unavailable here" in message and "Install bitsandbytes" in message
