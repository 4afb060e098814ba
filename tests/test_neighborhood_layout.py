"""Neighbourhood attention in natten's heads-last layout: ``heads_last=True`` gives the heads-first result moved,
on every path, and the natten path takes the caller's heads-last tensors without a layout copy."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from attn_zoo.layers import backends
from attn_zoo.layers import neighborhood as nb
from attn_zoo.layers.backends import TABLE, neighborhood_attention

NATTEN_REASON = nb._natten_import_error()


def _qkv(shape=(2, 3, 9, 11), d=8, dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, d, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3)]


def test_only_natten_is_heads_last():
    for device_type, ops in TABLE.items():
        for op, paths in ops.items():
            for name, path in paths.items():
                assert path.heads_last == (name == "natten"), (device_type, op, name)


@pytest.mark.parametrize("backend", ["reference", "cpu_fast"])
@pytest.mark.parametrize("border", ["zero", "masked", "inward"])
def test_heads_last_equals_heads_first(backend, border):
    q, k, v = _qkv(grad=True)
    out = neighborhood_attention(q, k, v, (3, 3), (1, 2), scale=0.3, border=border, backend=backend)
    last = [t.detach().permute(0, 2, 3, 1, 4).contiguous().requires_grad_(True) for t in (q, k, v)]
    out_last = neighborhood_attention(*last, (3, 3), (1, 2), scale=0.3, border=border, backend=backend, heads_last=True)
    assert out_last.shape == (2, 9, 11, 3, 8)
    assert torch.equal(out_last.permute(0, 3, 1, 2, 4), out)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    grads_last = torch.autograd.grad(out_last, last, g.permute(0, 2, 3, 1, 4))
    for a, b in zip(grads, grads_last):
        assert torch.equal(b.permute(0, 3, 1, 2, 4), a)


class _RecordingNatten:
    """Stands in for natten: records the tensors na2d receives, answers zeros in natten's layout."""

    HAS_LIBNATTEN = False
    seen: ClassVar[list[torch.Tensor]] = []

    @classmethod
    def na2d(cls, q, k, v, kernel_size, dilation, scale):
        cls.seen[:] = [q, k, v]
        return torch.zeros_like(q)


def test_natten_gets_the_callers_heads_last_tensors(monkeypatch, fresh_dispatch):
    monkeypatch.setattr(nb, "_natten_tried", True)
    monkeypatch.setattr(nb, "_natten_error", None)
    monkeypatch.setattr(nb, "_natten_module", _RecordingNatten)
    monkeypatch.setattr(backends.Path, "can_run", lambda self, op, name, device: None)
    q, k, v = (t.to(torch.float32) for t in _qkv(shape=(1, 9, 11, 2)))  # (B, H, W, heads) + d: heads-last
    with torch.no_grad():
        out = neighborhood_attention(q, k, v, (3, 3), scale=0.3, border="inward", backend="natten", heads_last=True)
    assert [t.data_ptr() for t in _RecordingNatten.seen] == [t.data_ptr() for t in (q, k, v)]  # no copy
    assert out.shape == q.shape
    # a heads-first caller still works: natten gets its layout, the output comes back heads-first
    first = [t.permute(0, 3, 1, 2, 4).contiguous() for t in (q, k, v)]
    with torch.no_grad():
        out = neighborhood_attention(*first, (3, 3), scale=0.3, border="inward", backend="natten")
    assert _RecordingNatten.seen[0].shape == (1, 9, 11, 2, 8)
    assert out.shape == first[0].shape


@pytest.mark.skipif(NATTEN_REASON is not None, reason=f"natten unavailable: {NATTEN_REASON}")
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_natten_heads_last_equals_heads_first_cpu():
    q, k, v = _qkv(dtype=torch.float32)
    with torch.no_grad():
        want = neighborhood_attention(q, k, v, (3, 5), (2, 2), scale=0.3, border="inward", backend="natten")
        last = [t.permute(0, 2, 3, 1, 4).contiguous() for t in (q, k, v)]
        got = neighborhood_attention(
            *last, (3, 5), (2, 2), scale=0.3, border="inward", backend="natten", heads_last=True
        )
    assert torch.equal(got.permute(0, 3, 1, 2, 4), want)


def test_msda_hands_natten_heads_last_views(monkeypatch, fresh_dispatch):
    import attn_zoo

    monkeypatch.setattr(nb, "_natten_tried", True)
    monkeypatch.setattr(nb, "_natten_error", None)
    monkeypatch.setattr(nb, "_natten_module", _RecordingNatten)
    monkeypatch.setattr(backends.Path, "can_run", lambda self, op, name, device: None)
    m = attn_zoo.create_mechanism("msda", 48, 6, border="inward", dilations=(1, 2), backend="natten")
    with torch.no_grad():
        out = m(torch.randn(2, 9, 10, 48))
    assert m.last_backend == "natten" and out.shape == (2, 9, 10, 48)
    assert _RecordingNatten.seen[0].shape == (2, 9, 10, 3, 8)  # (B, H, W, heads of the last group, d)
