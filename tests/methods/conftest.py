"""``descend``: one small gradient step on a training stage lowers its loss.

Whether a loss falls over several noisy steps at a fixed learning rate depends on the seed
(and so on the CPU's rounding); whether a small enough step along the negative gradient
lowers it does not: that is the first-order fact every training stage must satisfy, and
it fails exactly when the gradient is wrong, missing, or reaches the wrong parameters.
"""

import pytest
import torch

#: the step is sized so that its first-order decrease is this share of the loss: large
#: against float32 rounding (~1e-7 of it), small enough for the second-order term to stay
#: below it. Measured on every stage of every method's training tests over seed shifts
#: 0-11: the loss fell by 0.57 to 1.0 times the predicted decrease, never rose.
DECREASE = 1e-3


def _loss(stage, x, y, seed: int) -> float:
    torch.manual_seed(seed)  # the same per-image randomness (shuffles, ranks, noise) each time
    with torch.no_grad():
        return float(stage.module(x, y)[0])


def _descend(stage, x, y, seed: int = 123, decrease: float = DECREASE):
    """One SGD step on ``stage``, frozen modules held fixed; checks where gradients go.

    Every parameter group of the stage receives a non-zero gradient and no frozen module
    receives any. The step is ``lr_scale * lr * grad`` per group with ``lr`` chosen so the
    predicted (first-order) decrease is ``decrease`` of the loss; with the same randomness
    before and after, the loss must then fall. Returns the loss before and after and the
    step's logs.
    """
    for m in stage.frozen:
        m.requires_grad_(False)
    stage.module.train()
    for m in stage.frozen:
        m.eval()
    before = _loss(stage, x, y, seed)
    groups = [(g["params"], g["lr_scale"]) for g in stage.param_groups]
    # no gradient left from an earlier stage, on what trains now or on what is frozen
    for p in [p for params, _ in groups for p in params]:
        p.grad = None
    for m in stage.frozen:
        m.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, logs = stage.module(x, y)
    loss.backward()
    for m in stage.frozen:
        assert all(p.grad is None for p in m.parameters()), "a frozen module got a gradient"
    for i, (params, _) in enumerate(groups):
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in params), (
            f"parameter group {i} of stage {stage.name!r} got no gradient"
        )
    slope = sum(
        s * float(p.grad.square().sum()) for ps, s in groups for p in ps if p.grad is not None
    )
    lr = decrease * abs(before) / slope
    with torch.no_grad():
        for params, scale in groups:
            for p in params:
                if p.grad is not None:
                    p -= lr * scale * p.grad
    after = _loss(stage, x, y, seed)
    for m in stage.frozen:
        m.requires_grad_(True)
    return before, after, logs


@pytest.fixture
def descend():
    return _descend
