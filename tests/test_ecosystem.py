"""A converted model behaves like any PyTorch model: torch.compile, torch.export, AMP, dtype/device moves,
deepcopy/pickle, state_dict round trips, deterministic CPU backward."""
import copy
import io
import pickle

import pytest
import torch
import torch.nn as nn

import dcls_convert as dc


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.dense = nn.Conv2d(8, 8, 3, padding=1)
        self.seq = nn.Conv1d(8, 8, 5, padding=2, groups=8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.dw(x)) + self.dense(x)
        s = self.seq(x.mean(2))
        return self.head(s.mean(-1))


def converted(method="dcls", **opts):
    torch.manual_seed(0)
    rules = dc.TargetRules(min_kernel=3)
    model, _ = dc.convert(Net(), method, rules=rules, **opts)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("positions"):
                p.add_(0.31)
    return model


@pytest.mark.parametrize("method", ["dcls", "partial", "bloom"])
def test_compile_fullgraph_matches_eager(method):
    model = converted(method)
    x = torch.randn(2, 3, 16, 16)
    eager = model(x)
    eager.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("method", ["dcls", "bloom"])
def test_compile_under_autocast_matches_eager(method):
    """Under autocast the tap op takes float32 taps with bfloat16 activations: the fake kernel and autograd trace
    that mix (fullgraph), and the compiled step gives eager's outputs and float32 gradients."""
    model = converted(method)
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = model(x)
    eager.float().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(x)
    out.float().sum().backward()
    torch.testing.assert_close(out, eager)
    for n, p in model.named_parameters():
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-2, atol=1e-2, msg=n)


def test_compile_inductor_dcls():
    model = converted("dcls")
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_export_converted_and_densified():
    model = converted("dcls").eval()
    x = torch.randn(2, 3, 16, 16)
    ep = torch.export.export(model, (x,))
    torch.testing.assert_close(ep.module()(x), model(x))
    dense = dc.densify(model)
    torch.testing.assert_close(torch.export.export(dense, (x,)).module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["dcls", "partial", "bloom"])
def test_cpu_autocast_bfloat16(method):
    model = converted(method)
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    # bf16 has 8 bits of mantissa; a few layers deep the stated tolerance is 5 % of the output scale
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max()
    if method == "dcls":
        assert model.dw.positions.dtype == torch.float32 and model.dw.positions.grad.dtype == torch.float32


def test_moves_copies_and_pickle():
    model = converted("dcls")
    x = torch.randn(1, 3, 12, 12)
    model(x)
    d = copy.deepcopy(model).double()
    torch.testing.assert_close(d(x.double()).float(), model(x), rtol=1e-5, atol=1e-5)
    buf = io.BytesIO()
    pickle.dump(model, buf)
    again = pickle.loads(buf.getvalue())
    torch.testing.assert_close(again(x), model(x))
    h = copy.deepcopy(model).to(torch.bfloat16)
    assert h(x.bfloat16()).dtype == torch.bfloat16
    if torch.cuda.is_available():
        torch.testing.assert_close(copy.deepcopy(model).cuda()(x.cuda()).cpu(), model(x), rtol=1e-4, atol=1e-5)


def test_state_dict_strict_round_trip():
    a, b = converted("dcls"), converted("dcls")
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(1, 3, 12, 12)
    torch.testing.assert_close(a(x), b(x))


def test_cpu_backward_is_bitwise_deterministic():
    model = converted("dcls")
    x = torch.randn(4, 3, 20, 20)
    runs = []
    for _ in range(2):
        model.zero_grad()
        model(x).square().sum().backward()
        runs.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_bad_input_leaves_state_unchanged():
    model = converted("dcls")
    before = copy.deepcopy(model.state_dict())
    cases = [(torch.randn(3, 16, 16), ValueError, r"DclsConv2d: expected a 4-D input \(N, C, HxW\), got shape \(3, 16, 16\)"),
             (torch.randn(1, 4, 16, 16), ValueError, "DclsConv2d: expected 3 input channels, got 4"),
             (torch.randn(1, 3, 16, 16, dtype=torch.float64), TypeError,
              "DclsConv2d: input dtype torch.float64 does not match the layer's torch.float32")]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            model(bad)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    empty = model.dw(torch.randn(0, 8, 10, 10))
    assert empty.shape == (0, 8, 10, 10)


def test_onnx_export_of_densified_model(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    dense = dc.densify(converted("dcls").eval())
    x = torch.randn(2, 3, 16, 16)
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(dense, (x,), path, dynamo=True)
    sess = ort.InferenceSession(path)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), dense(x).detach(), rtol=1e-4, atol=1e-5)


def test_unbuilt_library_is_named_as_such(tmp_path):
    """The import failure is explained as "not built" when no compiled file exists (not as the import
    machinery's "partially initialized module" message), and as a load failure with its cause otherwise."""
    from dcls_convert.ops._library import describe_load_error

    err = ImportError("cannot import name '_C' from partially initialized module 'dcls_convert'")
    assert describe_load_error(err, str(tmp_path)) == "the compiled library dcls_convert._C is not built"
    (tmp_path / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    msg = describe_load_error(OSError("undefined symbol: _ZN3c10"), str(tmp_path))
    assert "failed to load" in msg and "undefined symbol" in msg


@pytest.mark.parametrize("bad,match", [
    (dict(C=5), "depthwise weight"), (dict(stride=[0, 1]), "stride"), (dict(padding=[-1, 0]), "padding"),
    (dict(window=[2**25, 1]), "window"), (dict(interp="gaussian"), "interpolation"),
    (dict(bias_dtype=torch.float64), "bias dtype")])
def test_fake_kernels_check_what_the_ops_check(bad, match):
    """Under FakeTensorMode (torch.compile, meta tracing) the ops refuse what the compiled ops refuse, with their
    words, instead of tracing a wrong shape or dividing by zero."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    C = bad.get("C", 3)
    args = dict(window=[5, 5], stride=[1, 1], padding=[2, 2], interp="bilinear")
    args.update({k: v for k, v in bad.items() if k not in ("C", "bias_dtype")})
    with FakeTensorMode():
        x = torch.empty(2, 3, 9, 9)
        w, p = torch.empty(C, 1, 4), torch.empty(2, C, 1, 4)
        b = torch.empty(3, dtype=bad["bias_dtype"]) if "bias_dtype" in bad else None
        with pytest.raises(RuntimeError, match=match):
            torch.ops.dcls_convert.taps_conv(x, w, p, b, args["window"], args["stride"], args["padding"],
                                             args["interp"])
