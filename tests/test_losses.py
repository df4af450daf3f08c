"""The fused (torch.compile) Gumbel path against the eager one, and its fallback when compiling fails."""
import warnings
import pytest
import torch
import gol_nb.losses as L


def _loss_and_grad(fused: bool, labels: torch.Tensor, logits: torch.Tensor, counts: torch.Tensor):
    gol = L.GOL(counts.numel(), counts, num_images=10_000, generator=torch.Generator().manual_seed(0), fused=fused)
    x = logits.clone().requires_grad_()
    loss = gol(x, labels, avg_factor=float(len(labels)))
    loss.backward()
    return loss.detach(), x.grad


@pytest.fixture(scope='module')
def batch():
    g = torch.Generator().manual_seed(1)
    C = 50
    counts = torch.randint(1, 60, (C,), generator=g)           # a mix of rare (f < 0.0011) and frequent classes
    logits = torch.randn(300, C, generator=g) * 4 - 3
    logits[0, :3] = torch.tensor([-1e4, 1e4, 12.])               # outside the clamp: zero gradient
    labels = torch.where(torch.rand(300, generator=g) < .3, torch.randint(0, C, (300,), generator=g), C)
    return labels, logits, counts


def test_fused_matches_eager(batch):
    loss_e, grad_e = _loss_and_grad(False, *batch)
    loss_f, grad_f = _loss_and_grad(True, *batch)
    assert L._fused_kernel is not None and L._fused_kernel is not L._gumbel_bce_dense  # really compiled
    assert torch.isfinite(loss_f) and loss_f > 0
    torch.testing.assert_close(loss_f, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_f, grad_e, rtol=1e-5, atol=1e-7)
    assert grad_f[0, :3].abs().sum() == 0


def test_fused_falls_back_when_compile_fails(batch, monkeypatch):
    def broken_compile(fn, **kw):
        def run(*a): raise RuntimeError('no C++ compiler')
        return run
    monkeypatch.setattr(L, '_fused_kernel', None)
    monkeypatch.setattr(torch, 'compile', broken_compile)
    with pytest.warns(UserWarning, match='torch.compile failed'):
        loss_f, grad_f = _loss_and_grad(True, *batch)
    loss_e, grad_e = _loss_and_grad(False, *batch)
    torch.testing.assert_close(loss_f, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_f, grad_e, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(L, '_fused_kernel', None)  # later tests compile for real
