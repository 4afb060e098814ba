"""GC-ViT: equality with timm's gcvit_xxtiny, naive references, batch independence, the global query
generator's levels and sizes, backends, dtypes, gradients, and the counts of GCViT-XXT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda
from torch.utils.flop_counter import FlopCounterMode

import attn_zoo
from attn_zoo.backbone import MixerSpec, create_model
from attn_zoo.backbone.timm_weights import gcvit_from_timm
from attn_zoo.errors import MechanismInputError
from attn_zoo.measure.counting import analytic_attention_macs, count_model
from attn_zoo.mechanisms.gcvit import GCViTAttention, GlobalQueryGenerator, pooling_levels

timm = pytest.importorskip("timm")


def narrow_xxt(img_size: int, **changes):
    """GCViT-XXT's structure (stem, windows 7-7-14-7, 2-2-6-2 blocks) at a quarter of the width, for speed."""
    return create_model("gcvit_xxt", img_size=img_size, num_classes=10, dims=(16, 32, 64, 128), **changes)


def make_pair(dim=16, heads=2, size=(8, 12), window=4, **knobs):
    """A local and a global mixer plus the stage's generator, as the harness builds them."""
    local = attn_zoo.create_mechanism("gcvit", dim, heads, feat_size=size, window=window, occurrence=0, **knobs)
    glob = attn_zoo.create_mechanism("gcvit", dim, heads, feat_size=size, window=window, occurrence=1, **knobs)
    gen = GCViTAttention.build_context(dim, heads, size, {"window": window, **knobs})
    return local, glob, gen


# -- equality with timm and the published counts --------------------------------------------------------------
@pytest.fixture(scope="module")
def timm_pair():
    torch.manual_seed(0)
    reference = timm.create_model("gcvit_xxtiny", pretrained=False).eval()
    ours = create_model("gcvit_xxt").eval()
    ours.load_state_dict(gcvit_from_timm(reference.state_dict()), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
    return ours, x, expected


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_gcvit_xxt_equals_timm_with_mapped_weights(timm_pair, backend):
    ours, x, expected = timm_pair
    for m in ours.mixers():
        m.set_backend(backend)
    with torch.no_grad():
        assert (ours(x) - expected).abs().max().item() < 1e-4


def test_gcvit_xxt_counts_match_release_and_formula():
    model = create_model("gcvit_xxt")
    counts = count_model(model, 224)
    assert counts["params"] == 11_995_428  # released code and timm gcvit_xxtiny
    assert abs(counts["macs"] / 2.121e9 - 1) < 0.002 and abs(counts["macs"] / 2.1e9 - 1) < 0.01
    assert analytic_attention_macs(model, 224) == counts["attention_macs"]


def test_official_level_logic_at_224(timm_pair):
    model = timm_pair[0]
    gens = [stage.contexts["gcvit"] for stage in model.stages]
    assert [g.levels for g in gens] == [3, 2, 0, 0]  # official: 3 and 2 pooled blocks, then one keep-size block
    assert [sum(k.startswith("conv") for k, _ in g.blocks.named_children()) for g in gens] == [3, 2, 1, 1]
    assert [g.window for g in gens] == [7, 7, 14, 7]
    kinds = [[b.mixer.global_query for b in stage.blocks] for stage in model.stages]
    assert kinds == [[False, True], [False, True], [False, True] * 3, [False, True]]
    assert pooling_levels(13, 7) == 1 and pooling_levels(6, 7) == 0 and pooling_levels(112, 7) == 4


# -- naive references from the formulas ------------------------------------------------------------------------
def naive(m, x, q_map=None):
    """Local (q_map None) or global window attention, one image and one window at a time, float64."""
    B, H, W, C = x.shape
    M, h, d = m.window[0], m.num_heads, m.head_dim
    Hp, Wp = -(-H // M) * M, -(-W // M) * M
    xp = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    xp[:, :H, :W] = x
    out = torch.zeros_like(xp)
    bias = m.rel_pos()
    for b in range(B):
        for i in range(0, Hp, M):
            for j in range(0, Wp, M):
                tokens = xp[b, i : i + M, j : j + M].reshape(M * M, C)
                if q_map is None:
                    q, k, v = m.qkv(tokens).reshape(M * M, 3, h, d).permute(1, 2, 0, 3)
                else:  # this image's global query, the same for each of its windows
                    q = q_map[b].reshape(M * M, h, d).transpose(0, 1)
                    k, v = m.qkv(tokens).reshape(M * M, 2, h, d).permute(1, 2, 0, 3)
                attn = torch.softmax(q @ k.transpose(-1, -2) * d**-0.5 + bias, dim=-1)
                y = m.proj((attn @ v).transpose(0, 1).reshape(M * M, C))
                out[b, i : i + M, j : j + M] = y.reshape(M, M, C)
    return out[:, :H, :W]


@pytest.mark.parametrize("size", [(8, 12), (6, 9)])
def test_local_and_global_equal_naive_reference(size):
    local, glob, gen = (m.double() for m in make_pair(size=size, window=4))
    x = torch.randn(3, *size, 16, dtype=torch.float64)
    q_map = gen(x)
    assert q_map.shape == (3, 4, 4, 16)
    for backend in ("reference", "sdpa"):
        local.set_backend(backend)
        glob.set_backend(backend)
        torch.testing.assert_close(local(x), naive(local, x))
        torch.testing.assert_close(glob(x, q_map), naive(glob, x, q_map))


def test_generator_equals_its_formula():
    torch.manual_seed(0)
    gen = GlobalQueryGenerator(8, (28, 28), 7).double()
    x = torch.randn(2, 28, 28, 8, dtype=torch.float64)
    y = x.permute(0, 3, 1, 2)
    for i in (1, 2):  # [x + PW(SE(GELU(DW(x))))] then MaxPool 3 s2 p1, twice: 28 -> 14 -> 7
        blk = gen.blocks.get_submodule(f"conv{i}")
        z = F.gelu(F.conv2d(y, blk.conv_dw.weight, padding=1, groups=8))
        gate = torch.sigmoid(F.gelu(z.mean((2, 3)) @ blk.se.fc1.weight.flatten(1).T) @ blk.se.fc2.weight.flatten(1).T)
        y = F.max_pool2d(y + F.conv2d(z * gate[..., None, None], blk.conv_pw.weight), 3, 2, 1)
    torch.testing.assert_close(gen(x), y.permute(0, 2, 3, 1))


# -- batch independence (NVlabs/GCVit issue 10) ------------------------------------------------------------------
def batch_gap(model, x):
    """Largest difference between batched and one-image forwards: on the logits and on the final features."""
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        gaps = [0.0, 0.0]
        for i in range(len(x)):
            one = model.forward_features(x[i : i + 1])
            gaps[0] = max(gaps[0], (logits[i : i + 1] - model.forward_head(one)).abs().max().item())
            gaps[1] = max(gaps[1], (feats[i : i + 1] - one).abs().max().item())
        return gaps


def test_batch_independence_and_a_tiled_query_would_break_it(monkeypatch):
    torch.manual_seed(0)
    model = narrow_xxt(64).eval()  # stages 1-2 have 9 and 4 windows per image
    with torch.no_grad():  # sharper attention than at init (std 0.2), so the query visibly matters
        for m in model.mixers():
            m.qkv.weight.mul_(10)
    x = torch.randn(4, 3, 64, 64)
    assert max(batch_gap(model, x)) < 1e-5

    def tiled(q, num_windows):  # the released bug: q.repeat over the flattened B * nW windows
        return q.repeat(num_windows, 1, 1, 1).reshape(q.shape[0], num_windows, *q.shape[1:])

    monkeypatch.setattr(GCViTAttention, "_repeat_query", staticmethod(tiled))
    assert batch_gap(model, x)[1] > 1e-2  # measured 0.14: other images' queries reach the windows


# -- the per-stage context in the harness ------------------------------------------------------------------------
def test_context_is_computed_once_after_the_downsampler_and_shared():
    model = narrow_xxt(64).eval()
    stage = model.stages[2]
    seen = {}
    stage.downsample.register_forward_hook(lambda m, a, out: seen.__setitem__("down", out))
    gen = stage.contexts["gcvit"]
    gen.register_forward_pre_hook(lambda m, a: seen.setdefault("gen_in", []).append(a[0]))
    gen.register_forward_hook(lambda m, a, out: seen.__setitem__("gen_out", out))
    contexts = []
    for block in stage.blocks:
        block.mixer.register_forward_pre_hook(lambda m, a: contexts.append((m.global_query, a[1])))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert len(seen["gen_in"]) == 1 and seen["gen_in"][0] is seen["down"]
    assert all(ctx is seen["gen_out"] for is_global, ctx in contexts if is_global) and len(contexts) == 6


def test_all_local_ablation_builds_no_generator():
    config = narrow_xxt(224).config
    spec = MixerSpec("gcvit", {**config.stage_pattern(0)[0].knobs, "global_query": False})
    model = create_model(config.replace(mixer=spec))
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in narrow_xxt(224).parameters())
    assert all(len(stage.contexts) == 0 for stage in model.stages)
    assert all(not m.global_query and m.qkv.out_features == 3 * m.dim for m in model.mixers())


def test_global_block_without_context_says_how_to_pass_it():
    local, glob, gen = make_pair()
    x = torch.randn(1, 8, 12, 16)
    assert local(x).shape == x.shape  # local blocks need no context
    with pytest.raises(MechanismInputError, match=r"needs the stage's global query as `context`.*build_context"):
        glob(x)
    with pytest.raises(MechanismInputError, match=r"\(B, M, M, C\) = \(1, 4, 4, 16\), got \(2, 4, 4, 16\)"):
        glob(x, gen(torch.randn(2, 8, 12, 16)))
    assert glob(x, gen(x)).shape == x.shape


# -- sizes -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(7, 7), (9, 13), (14, 14), (5, 20), (3, 2), (16, 16)])
def test_any_stage_size_with_the_generator_built_for_it(size):
    local, glob, gen = make_pair(dim=12, heads=3, size=size, window=7)
    x = torch.randn(2, *size, 12)
    q = gen(x)
    assert q.shape == (2, glob.window[0], glob.window[0], 12)
    assert local(x).shape == x.shape and torch.isfinite(glob(x, q)).all()


def test_run_time_size_other_than_build_time_resizes_or_refuses():
    _, glob, gen = make_pair(size=(56, 56), window=7)
    x = torch.randn(1, 40, 64, 16)  # 3 levels: 5 x 8, adaptive max pool -> 7 x 7
    assert gen(x).shape == (1, 7, 7, 16) and glob(x, gen(x)).shape == x.shape
    strict = GCViTAttention.build_context(16, 2, (56, 56), {"window": 7, "query_resize": "error"})
    assert strict(torch.randn(1, 50, 55, 16)).shape == (1, 7, 7, 16)  # ceil(50 / 8) = ceil(55 / 8) = 7
    with pytest.raises(MechanismInputError, match=r"40x64 map into 5x8.*allowed stage map sides: 49\.\.56"):
        strict(x)


@pytest.mark.parametrize("img", [160, 100, 33])  # 224: the timm test
def test_gcvit_xxt_runs_at_several_resolutions(img):
    model = narrow_xxt(img).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, img, img)).shape == (1, 10)


# -- gradients, determinism, dtypes, backends --------------------------------------------------------------------
def test_gradients_reach_every_parameter_including_the_generator():
    model = create_model("zoo_s32", mixer="gcvit")  # the harness family at 32x32: maps 16, 8, 4, 2
    assert all(len(stage.contexts) == 1 for stage in model.stages)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic_on_cpu(dtype):
    model = narrow_xxt(64).eval().to(dtype)
    x = torch.randn(2, 3, 64, 64, dtype=dtype)
    with torch.no_grad():
        a, b = model(x), model(x)
        assert a.dtype == dtype and torch.equal(a, b)
        if dtype == torch.bfloat16:
            ref = model.float()(x.float())
            assert (a.float() - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("global_query", [False, True])
def test_backends_equal_forward_and_backward(global_query):
    assert GCViTAttention.backends == ("sdpa", "reference", "flex", "xformers")
    torch.manual_seed(0)
    local, glob, gen = make_pair(size=(9, 10), window=4)
    mixer = glob if global_query else local
    x = torch.randn(2, 9, 10, 16)
    grads = {}
    for backend in ("reference", "sdpa"):
        mixer.set_backend(backend)
        mixer.zero_grad()
        gen.zero_grad()
        xi = x.clone().requires_grad_()
        out = mixer(xi, gen(xi) if global_query else None)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        assert mixer.last_backend == backend
        grads[backend] = [
            out,
            xi.grad,
            *(p.grad for p in [*mixer.parameters(), *gen.parameters()] if p.grad is not None),
        ]
    for a, b in zip(grads["reference"], grads["sdpa"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "xformers"])
def test_fast_backends_on_cuda_equal_reference(backend):
    if backend == "xformers":
        pytest.importorskip("xformers")
    _, glob, gen = (m.cuda() for m in make_pair(size=(14, 14), window=7))
    x = torch.randn(2, 14, 14, 16, device="cuda")
    glob.set_backend("reference")
    expected = glob(x, gen(x))
    glob.set_backend(backend)
    torch.testing.assert_close(glob(x, gen(x)), expected, atol=1e-4, rtol=1e-4)


# -- analytic MACs ------------------------------------------------------------------------------------------------
def counted_macs(module, *args):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*args)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(("size", "window"), [((14, 14), 7), ((9, 13), 4), ((8, 8), 8), ((20, 11), 7), ((56, 56), 7)])
def test_attention_macs_formulas_match_flop_counter(size, window):
    local, glob, gen = make_pair(dim=16, heads=2, size=size, window=window)
    x = torch.randn(1, *size, 16)
    q = gen(x)
    for backend in ("reference", "sdpa"):
        local.set_backend(backend)
        glob.set_backend(backend)
        assert abs(local.attention_macs(*size) / counted_macs(local, x) - 1) < 0.01
        assert abs(glob.attention_macs(*size) / counted_macs(glob, x, q) - 1) < 0.01
    assert abs(gen.attention_macs(*size) / counted_macs(gen, x) - 1) < 0.01
