"""Swin window attention block: attn_zoo's harness block vs timm's SwinTransformerBlock, same shapes, same weights.

Run: ``pytest benchmarks/bench_swin_timm.py --benchmark-only --benchmark-json=benchmarks/results/swin-vs-timm-cpu.json``
"""

from __future__ import annotations

import pytest
import torch
from timm.layers import Mlp
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

import attn_zoo
from attn_zoo.backbone.harness import Block

# Swin-T stage shapes at 224: (feature side, channels, heads); batch 8
SHAPES = [(56, 96, 3), (28, 192, 6), (14, 384, 12)]


def _pair(side: int, dim: int, heads: int, shift: bool):
    torch.manual_seed(0)
    ref = SwinTransformerBlock(dim, (side, side), heads, window_size=7, shift_size=3 if shift else 0).eval()
    mixer = attn_zoo.create_mechanism("swin", dim, heads, feat_size=(side, side), window=7, shift=shift)
    ours = Block(dim, mixer, 4.0, 1e-5, 0.0, None, cpe=False).eval()
    state = {
        k.replace("attn.relative_position_bias_table", "mixer.rel_pos.relative_position_bias_table").replace(
            "attn.", "mixer."
        ): v
        for k, v in ref.state_dict().items()
        if "relative_position_index" not in k and "attn_mask" not in k
    }
    state = {k.replace("drop_path", "drop_path"): v for k, v in state.items()}
    ours.load_state_dict(state, strict=True)
    assert isinstance(ours.mlp, Mlp) and isinstance(ours.norm1, nn.LayerNorm)
    return ref, ours


@pytest.mark.parametrize("shift", [False, True], ids=["W-MSA", "SW-MSA"])
@pytest.mark.parametrize(("side", "dim", "heads"), SHAPES, ids=[f"{s}x{s}x{c}" for s, c, _ in SHAPES])
@pytest.mark.parametrize("impl", ["timm", "attn_zoo"])
def test_swin_block_forward(benchmark, impl, side, dim, heads, shift):
    torch.set_num_threads(2)
    ref, ours = _pair(side, dim, heads, shift)
    x = torch.randn(8, side, side, dim)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)  # same math before timing it
        module = ref if impl == "timm" else ours
        benchmark.extra_info.update(threads=torch.get_num_threads(), batch=8, shape=[side, side, dim])
        benchmark.pedantic(module, args=(x,), rounds=7, warmup_rounds=2, iterations=1)
