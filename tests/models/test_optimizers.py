"""instseg.models.optimizers: torch's fused kernel where the optimizer has one and its config
leaves the implementation open; the fused update is the unfused one up to rounding."""

from __future__ import annotations

import functools

import pytest
import torch

from instseg.models.optimizers import build_optimizer, takes_fused


def params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(shape)) for shape in ((64, 3, 3, 3), (64,), (10, 64))]


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.AdamW,
                                       functools.partial(torch.optim.AdamW, lr=1e-3)])
def test_fused_where_torch_has_the_kernel(optimizer):
    assert build_optimizer(optimizer, params()).defaults["fused"] is True
    assert not build_optimizer(optimizer, params(), fused=False).defaults["fused"]


@pytest.mark.parametrize("optimizer", [
    functools.partial(torch.optim.AdamW, foreach=True),  # the config chose: taken as it is
    functools.partial(torch.optim.AdamW, fused=False),
    torch.optim.RMSprop,  # no fused kernel
])
def test_left_as_configured(optimizer):
    assert not takes_fused(optimizer)
    built = build_optimizer(optimizer, params())
    assert not built.defaults.get("fused")
    assert built.defaults.get("foreach") == getattr(optimizer, "keywords", {}).get("foreach")


@pytest.mark.parametrize("optimizer", [
    functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.05),
    functools.partial(torch.optim.SGD, lr=0.02, momentum=0.9, weight_decay=1e-4),
])
def test_fused_steps_match_the_unfused_ones(optimizer):
    weights = {fused: params() for fused in (True, False)}
    optimizers = {fused: build_optimizer(optimizer, weights[fused], fused=fused)
                  for fused in (True, False)}
    for step in range(5):
        torch.manual_seed(step)
        grads = [torch.randn_like(p) for p in weights[True]]
        for fused in (True, False):
            for p, g in zip(weights[fused], grads, strict=True):
                p.grad = g.clone()
            optimizers[fused].step()
    start = params()
    for fused_p, plain_p, p0 in zip(weights[True], weights[False], start, strict=True):
        assert not torch.equal(fused_p, p0)  # the steps moved the weights
        torch.testing.assert_close(fused_p, plain_p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("saved_fused", [True, False])
def test_loading_a_state_keeps_the_implementation_it_was_built_with(saved_fused):
    # a resumed run: the checkpoint's optimizer written fused or not, whatever this run builds
    saved = build_optimizer(torch.optim.AdamW, params(), fused=saved_fused)
    for p in saved.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    saved.step()
    for fused in (True, False):
        resumed = build_optimizer(functools.partial(torch.optim.AdamW, lr=0.5), params(),
                                  fused=fused)
        resumed.load_state_dict(saved.state_dict())
        group = resumed.param_groups[0]
        assert bool(group["fused"]) is fused
        assert group["lr"] == saved.param_groups[0]["lr"]  # the hyperparameters still load
        assert getattr(resumed, "_step_supports_amp_scaling", False) is fused
