"""run.optim.adamw: AdamW's update, through the fused kernel when every parameter allows it."""

import torch

from gradascent.run.optim import adamw


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g))]


def _step(optimizers, params_a, params_b, grads) -> None:
    """The same gradients into both parameter lists, then one step of every optimizer."""
    for a, b, gr in zip(params_a, params_b, grads):
        a.grad, b.grad = gr.clone(), gr.clone()
    for opt in optimizers:
        opt.step()


def test_fused_adamw_makes_adamws_update():
    ours, ref = _params(0), _params(0)
    opt = adamw(ours, lr=0.1, weight_decay=0.01)
    ref_opt = torch.optim.AdamW(ref, lr=0.1, weight_decay=0.01, foreach=False)
    assert opt.defaults["fused"] is True
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        _step([opt, ref_opt], ours, ref, [torch.randn(p.shape, generator=g) for p in ours])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert not torch.equal(a, _params(0)[0] if a.dim() == 2 else _params(0)[1])  # it moved


def test_state_dict_round_trip_between_fused_and_unfused():
    """A checkpoint of the per-tensor AdamW loads into an ``adamw`` optimizer and goes on with the same update
    (the checkpoint's kernel choice comes with its parameter groups)."""
    a, b = _params(0), _params(0)
    old, ref = torch.optim.AdamW(a, lr=0.1, foreach=False), torch.optim.AdamW(b, lr=0.1, foreach=False)
    g = torch.Generator().manual_seed(2)
    grads = [[torch.randn(p.shape, generator=g) for p in a] for _ in range(4)]
    for step in grads[:2]:
        _step([old, ref], a, b, step)
    resumed = adamw(a, lr=0.1)
    resumed.load_state_dict(old.state_dict())
    for step in grads[2:]:
        _step([resumed, ref], a, b, step)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_parameter_groups_and_unfusable_parameters():
    groups = [{"params": _params(0), "lr": 0.1}, {"params": iter(_params(1)), "lr": 0.2}]  # an iterator too
    opt = adamw(groups)
    assert opt.defaults["fused"] is True
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert adamw(_params(0), foreach=True).defaults["fused"] is None  # an explicit choice is kept
    double = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))  # float64 keeps the default path
    assert adamw([double]).defaults["fused"] is None
