"""Distiller: the original network teaches its conversion during the fine-tune."""
import copy

import pytest
import torch
import torch.nn as nn

import dcls_convert as dc


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def test_identical_student_has_zero_distillation_and_feature_loss():
    teacher = _net()
    distill = dc.Distiller(teacher, copy.deepcopy(teacher), alpha=1.0, features=["2"])
    loss, logits = distill(torch.randn(4, 3, 12, 12))
    assert logits.shape == (4, 5)
    assert abs(float(loss.detach())) < 1e-6 and distill.last["distill"] < 1e-6 and distill.last["features"] < 1e-10


def test_only_the_student_learns_and_the_gap_to_the_teacher_closes():
    teacher = _net()
    x = torch.randn(32, 3, 12, 12)
    student, _ = dc.convert(teacher, "dcls", kernel_count=16)  # 16 of 49 taps: a lossy start
    distill = dc.Distiller(teacher, student, alpha=1.0, temperature=2.0, features=["2"], feature_weight=0.5)
    teacher_state = copy.deepcopy(teacher.state_dict())
    opt = torch.optim.Adam(dc.param_groups(student, lr=3e-3))
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss, _ = distill(x)
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < 0.5 * first  # measured: 0.107 -> 0.037
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training


def test_task_loss_mixes_in_with_labels():
    teacher = _net()
    distill = dc.Distiller(teacher, copy.deepcopy(teacher), alpha=0.25)
    x, y = torch.randn(6, 3, 12, 12), torch.randint(0, 5, (6,))
    loss, logits = distill(x, y)
    torch.testing.assert_close(loss, 0.75 * nn.functional.cross_entropy(logits, y) + 0.25 * distill.last["distill"])
    with pytest.raises(ValueError, match="a target is needed"):
        distill(x)


class Pair(nn.Module):
    """A model returning (logits, something else)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x.mean()


def test_outputs_devices_and_wrappers():
    """Tuple outputs with a logits picker (and a clear error without one), a float64 teacher for a float32 student,
    feature names of a wrapped student, and models that stay picklable (hooks exist only during a call)."""
    import io

    teacher = Pair(_net()).double()
    student = nn.DataParallel(Pair(copy.deepcopy(teacher.net).float()))
    x, y = torch.randn(4, 3, 12, 12), torch.randint(0, 5, (4,))
    with pytest.raises(ValueError, match="returned a tuple, not a logits tensor; pass logits="):
        dc.Distiller(teacher, student)(x, y)
    distill = dc.Distiller(teacher, student, features=["net.2"], logits=lambda out: out[0])
    loss, logits = distill(x, y)
    assert logits.shape == (4, 5) and logits.dtype == torch.float32 and distill.last["features"] < 1e-10
    loss.backward()
    torch.save(student, io.BytesIO())  # no hook left behind
    assert not any(m._forward_hooks for m in list(teacher.modules()) + list(student.modules()))


def test_bad_arguments_are_named():
    teacher = _net()
    with pytest.raises(ValueError, match="no module 'stages.9'"):
        dc.Distiller(teacher, copy.deepcopy(teacher), features=["stages.9"])
    with pytest.raises(ValueError, match="same object"):
        dc.Distiller(teacher, teacher)
    with pytest.raises(ValueError, match="alpha"):
        dc.Distiller(teacher, copy.deepcopy(teacher), alpha=2)
