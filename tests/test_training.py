"""Training helpers: parameter groups, the position-clamping step hook, sigma annealing, freezing."""
import pytest
import torch
import torch.nn as nn

import dcls_convert as dc


def _model(interp="bilinear"):
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 7, padding=3, groups=8),
                      nn.Conv2d(8, 8, 7, padding=3, groups=8))
    out, _ = dc.convert(m, "dcls", interpolation=interp)
    return out


def test_param_groups_contain_exactly_the_right_tensors():
    model = _model("gaussian")
    model[3].positions = model[2].positions  # shared once
    groups = {g["name"]: g for g in dc.param_groups(model, lr=1e-3, weight_decay=0.05)}
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(groups["positions"]["params"]) == {id(model[2].positions), id(model[2].sigma), id(model[3].sigma)}
    assert groups["positions"]["lr"] == pytest.approx(5e-3) and groups["positions"]["weight_decay"] == 0
    assert ids(groups["weights"]["params"]) == {id(model[0].weight), id(model[2].weight), id(model[3].weight)}
    assert ids(groups["no_decay"]["params"]) == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                 id(model[2].bias), id(model[3].bias)}
    all_ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len({id(p) for p in model.parameters()})


def test_step_hook_keeps_positions_in_range():
    model = _model()
    opt = torch.optim.SGD(dc.param_groups(model, lr=1.0), lr=1.0)
    dc.keep_positions_in_range(opt, model)
    x = torch.randn(2, 3, 12, 12)
    out = model(x)
    # a loss whose gradient pushes every position far outside the window
    loss = out.sum() - 1000 * sum(m.positions.sum() for m in model if isinstance(m, dc.DclsConv2d))
    loss.backward()
    opt.step()
    for m in (model[2], model[3]):
        assert m.positions.min() >= -8 and m.positions.max() <= 8
        assert (m.positions == 8).any()


def test_sigma_annealer_reaches_target():
    model = _model("gaussian")
    ann = dc.SigmaAnnealer(model, start=1.0, end=0.27, steps=10)
    assert model[2].sigma_min == pytest.approx(1.0)
    for _ in range(15):
        ann.step()
    assert model[2].sigma_min == pytest.approx(0.27) and model[3].sigma_min == pytest.approx(0.27)


def test_freeze_policies():
    model = _model()
    dc.freeze(model, "new")
    assert not model[0].weight.requires_grad and model[2].positions.requires_grad
    dc.freeze(model, "no_norms")
    assert model[0].weight.requires_grad and not model[1].weight.requires_grad
    dc.freeze(model, "all")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="policy"):
        dc.freeze(model, "some")


def test_round_positions():
    model = _model()
    with torch.no_grad():
        model[2].positions.add_(0.3)
    dc.round_positions_(model)
    assert torch.equal(model[2].positions, model[2].positions.round())


def test_plot_kernels(tmp_path):
    """The PNG is a real image, and the first panel shows channel 0's dense kernel (input channel 0)."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes
    import matplotlib.image

    model = _model()
    drawn = {}
    real = matplotlib.axes.Axes.imshow

    def spy(ax, data, *args, **kwargs):
        drawn.setdefault("first", data)
        return real(ax, data, *args, **kwargs)

    matplotlib.axes.Axes.imshow = spy
    try:
        path = dc.plot_kernels(model, str(tmp_path / "k.png"))
    finally:
        matplotlib.axes.Axes.imshow = real
    assert path.endswith("k.png") and matplotlib.image.imread(path).ndim == 3
    want = model[2].dense_kernel()[0, 0].detach().float().numpy()
    assert drawn["first"].shape == want.shape and abs(drawn["first"] - want).max() < 1e-6


def test_plot_kernels_shows_tap_moves(tmp_path):
    """With the model as converted, the plot links every tap to its start (one line per tap moved), has a colour
    bar per layer and a legend."""
    matplotlib = pytest.importorskip("matplotlib")
    import copy

    import matplotlib.pyplot as plt

    model = _model()
    start = copy.deepcopy(model)
    with torch.no_grad():
        model[2].positions.add_(0.7)
    drawn = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        drawn["fig"] = fig
        return real_savefig(fig, *args, **kwargs)

    matplotlib.figure.Figure.savefig = spy
    try:
        dc.plot_kernels(model, str(tmp_path / "moves.png"), start=start, channels=2)
    finally:
        matplotlib.figure.Figure.savefig = real_savefig
    fig = drawn["fig"]
    K = model[2].kernel_count
    kernel_axes = [ax for ax in fig.axes if ax.images]
    assert sum(len(ax.lines) for ax in kernel_axes) >= 2 * K  # a line per tap in each of the 2 channels
    assert fig.legends and "tap at conversion" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(fig.axes) > len(kernel_axes)  # colour bars
    plt.close("all")
