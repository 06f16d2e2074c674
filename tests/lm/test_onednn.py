"""oneDNN linears: the same products as F.linear, forward and both gradients, and routing scoped to a block."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradascent.errors import ConfigError
from gradascent.lm import completion_logprobs, load_model
from gradascent.lm import onednn
from gradascent.lm.onednn import OneDNNLinear, linear, onednn_linears

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN linear")


@pytest.fixture(autouse=True)
def _forced_on(monkeypatch):
    """These tests check the routing itself: on, whatever this CPU's default (``preferred()``)."""
    monkeypatch.setenv("GRADASCENT_ONEDNN", "1")


@pytest.mark.parametrize("vendor,machine,switch,expected", [
    ("AuthenticAMD", "x86_64", "auto", True),
    ("AuthenticAMD", "x86_64", None, True),  # unset is auto
    ("GenuineIntel", "x86_64", "auto", False),  # MKL is the faster BLAS there
    ("GenuineIntel", "x86_64", "1", True),
    ("AuthenticAMD", "x86_64", "0", False),
    (None, "x86_64", "auto", False),  # vendor unreadable: torch's own BLAS
    ("AuthenticAMD", "aarch64", "auto", False),
])
def test_switch_defaults_by_cpu_vendor(monkeypatch, vendor, machine, switch, expected):
    monkeypatch.setattr(onednn, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(onednn.platform, "machine", lambda: machine)
    if switch is None:
        monkeypatch.delenv("GRADASCENT_ONEDNN")
    else:
        monkeypatch.setenv("GRADASCENT_ONEDNN", switch)
    assert onednn.enabled() is expected


def test_switch_rejects_other_values(monkeypatch):
    monkeypatch.setenv("GRADASCENT_ONEDNN", "yes")
    with pytest.raises(ConfigError, match="GRADASCENT_ONEDNN"):
        onednn.enabled()


def test_cpu_vendor_is_read_where_linux_lists_it():
    try:
        with open("/proc/cpuinfo") as f:
            listed = [line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")]
    except OSError:
        listed = []
    if not listed:
        pytest.skip("no vendor_id in /proc/cpuinfo here")
    assert onednn.cpu_vendor() == listed[0]


def _routed(model: nn.Module) -> list[bool]:
    return ["forward" in vars(m) for m in model.modules() if type(m) is nn.Linear]


@pytest.mark.parametrize("bias", [True, False])
def test_products_match_float64_reference(bias):
    # y = x W^T + b, dL/dx = g W, dL/dW = g^T x, dL/db = sum g: compared with the same products in float64.
    # float32 keeps ~7 digits; with K = 96 terms of size ~1 the sums are ~10, so 1e-4 absolute is ~1e-5 relative.
    torch.manual_seed(0)
    x = torch.randn(3, 5, 96, requires_grad=True)
    w = torch.randn(40, 96, requires_grad=True)
    b = torch.randn(40, requires_grad=True) if bias else None
    y = OneDNNLinear.apply(x, w, b)
    g = torch.randn_like(y)
    y.backward(g)
    y64 = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert y.shape == (3, 5, 40) and y.dtype == torch.float32
    assert (y.double() - y64).abs().max() < 1e-4
    g2, x2 = g.double().reshape(-1, 40), x.double().reshape(-1, 96)
    assert (x.grad.double() - (g2 @ w.double()).view(3, 5, 96)).abs().max() < 1e-4
    assert (w.grad.double() - g2.t() @ x2).abs().max() < 1e-4
    if bias:
        assert (b.grad.double() - g2.sum(0)).abs().max() < 1e-4


def test_strided_input_and_gradient():
    # a transposed (non-contiguous) input, and an upstream gradient that is a transposed view
    torch.manual_seed(1)
    xt = torch.randn(32, 7, requires_grad=True)
    w = torch.randn(16, 32, requires_grad=True)
    y = linear(xt.t(), w)  # (7, 16)
    gt = torch.randn(16, 7)
    y.backward(gt.t())
    assert torch.allclose(y, xt.t() @ w.t(), atol=1e-5)
    assert torch.allclose(xt.grad, (gt.t() @ w).t(), atol=1e-5)
    assert torch.allclose(w.grad, gt @ xt.t(), atol=1e-5)


def test_only_grad_of_what_needs_it():
    x = torch.randn(4, 8)
    w = torch.randn(3, 8, requires_grad=True)
    linear(x, w).sum().backward()
    assert torch.allclose(w.grad, x.sum(0).expand(3, 8), atol=1e-5)  # d(sum y)/dW = 1^T x for every row


def test_falls_back_outside_float32_cpu_and_when_switched_off(monkeypatch):
    x, w = torch.randn(4, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(linear(x, w), F.linear(x, w))  # float64 is F.linear's own result, bit for bit
    empty = linear(torch.randn(0, 8), torch.randn(3, 8))
    assert empty.shape == (0, 3)
    model, _ = load_model("qwen2-micro", seed=0)
    monkeypatch.setenv("GRADASCENT_ONEDNN", "0")
    with onednn_linears(model):
        assert not any(_routed(model))


def test_routing_is_scoped_and_gives_the_same_logprobs_and_gradients():
    model, tok = load_model("qwen2-micro", seed=0)
    ids = torch.randint(3, 99, (3, 9), generator=torch.Generator().manual_seed(0))
    pmask = torch.ones(3, 4, dtype=torch.bool)
    cmask = torch.ones(3, 5, dtype=torch.bool)
    with onednn_linears(model):
        assert all(_routed(model)) and len(_routed(model)) == 2 * 7 + 1  # 7 projections a layer, the LM head
        with onednn_linears(model):  # nested: still routed, and the inner exit leaves the outer's routing
            pass
        assert all(_routed(model))
    assert not any(_routed(model))

    def run(enabled: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("GRADASCENT_ONEDNN", "1" if enabled else "0")
            logp = completion_logprobs(model, ids[:, :4], pmask, ids[:, 4:], cmask)
            logp.sum().backward()
        return logp.detach(), [p.grad.clone() for p in model.parameters()]

    (a, ga), (b, gb) = run(True), run(False)
    assert torch.allclose(a, b, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ga, gb))


def test_gradient_checkpointed_model_is_left_alone():
    model, _ = load_model("qwen2-micro", seed=0)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    with onednn_linears(model):
        assert not any(_routed(model))
