import pytest
import torch


def _stage_loss(stage, x, y, seed=123):
    torch.manual_seed(seed)  # the same per-image randomness (shuffles) before and after
    with torch.no_grad():
        return float(stage.module(x, y)[0])


def _train_stage(stage, x, y, steps, lr):
    """A few SGD steps on one training stage, its frozen modules held fixed.

    Returns the loss on (x, y) before and after, and the last step's logs.
    """
    for m in stage.frozen:
        m.requires_grad_(False)
    opt = torch.optim.SGD(
        [{"params": g["params"], "lr": lr * g["lr_scale"]} for g in stage.param_groups],
        momentum=0.9,
    )
    stage.module.train()
    for m in stage.frozen:
        m.eval()
    before = _stage_loss(stage, x, y)
    for _ in range(steps):
        loss, logs = stage.module(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in stage.frozen:
        m.requires_grad_(True)
    return before, _stage_loss(stage, x, y), logs


@pytest.fixture
def train_stage():
    return _train_stage
