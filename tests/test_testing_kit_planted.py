"""The conformance kit catches a planted bug of each kind it checks, and names it.

``Clean`` is a small, correct mechanism (global attention written out); each ``Planted*`` class breaks one
thing the way real code breaks it. Each test asserts the check that must catch it fails with a message
saying what is wrong, and that the clean mechanism passes everything (no false alarm).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from attn_zoo.errors import MechanismInputError
from attn_zoo.mechanisms.base import Mixer
from attn_zoo.testing import CHECKS, check_mechanism


class Clean(Mixer):
    """Global attention over all tokens, written out: qkv, softmax(q k^T / sqrt(d)) v, proj.

    Args:
        qkv_bias: bias in the qkv projection.
    """

    def __init__(self, dim: int, num_heads: int, *, feat_size: tuple[int, int] | None = None, qkv_bias: bool = True):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return tuple(qkv.unbind(0))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(-1) @ v

    def forward(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        B, H, W, C = self.check_input(x)
        out = self.attend(*self.heads(x))
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))

    def attention_macs(self, height: int, width: int) -> int:
        n, c = height * width, self.dim
        return 4 * n * c * c + 2 * n * n * c


class PlantedShape(Clean):
    """Forgets to fold the tokens back into the map: returns (B, H*W, C)."""

    def forward(self, x, context=None):
        B, H, W, C = self.check_input(x)
        return self.proj(self.attend(*self.heads(x)).transpose(1, 2).reshape(B, H * W, C))


class PlantedNoInputCheck(Clean):
    """Skips check_input: a wrong channel count dies inside the Linear with a raw RuntimeError."""

    def forward(self, x, context=None):
        B, H, W, C = x.shape
        return self.proj(self.attend(*self.heads(x)).transpose(1, 2).reshape(B, H, W, C))


class PlantedBatchMixing(Clean):
    """Centres the keys over dim 0 (the batch) instead of the tokens: images leak into each other."""

    def attend(self, q, k, v):
        return super().attend(q, k - k.mean(dim=0, keepdim=True), v)


class PlantedDeadParameter(Clean):
    """Declares a gate it never uses."""

    def __init__(self, dim, num_heads, *, feat_size=None, qkv_bias: bool = True):
        super().__init__(dim, num_heads, feat_size=feat_size, qkv_bias=qkv_bias)
        self.gate = nn.Parameter(torch.ones(dim))


class PlantedNondeterministic(Clean):
    """A noise "regulariser" left on in eval: torch.randn in forward."""

    def forward(self, x, context=None):
        return super().forward(x + 1e-3 * torch.randn_like(x))


class PlantedMacs(Clean):
    """The formula forgets the output projection."""

    def attention_macs(self, height, width):
        n, c = height * width, self.dim
        return 3 * n * c * c + 2 * n * n * c


class PlantedOddCrash(Clean):
    """Mixes each row with its partner row (0<->1, 2<->3, ...): an odd height indexes past the end."""

    def forward(self, x, context=None):
        H = self.check_input(x)[1]
        partner = torch.arange(H) ^ 1
        return super().forward(0.5 * (x + x[:, partner]))


class PlantedUnnamedRefusal(Clean):
    """Refuses odd maps, but the message does not say which mechanism refuses."""

    def forward(self, x, context=None):
        if x.dim() == 4 and (x.shape[1] % 2 or x.shape[2] % 2):
            raise MechanismInputError("the map must have even sides")
        return super().forward(x)


class PlantedBf16Cancellation(Clean):
    """Normalises shifted tokens with a one-pass variance E[x^2] - E[x]^2: fine in float32, cancels in bfloat16."""

    def __init__(self, dim, num_heads, *, feat_size=None, qkv_bias: bool = True):
        super().__init__(dim, num_heads, feat_size=feat_size, qkv_bias=qkv_bias)
        self.shift = nn.Parameter(torch.full((dim,), 32.0))

    def forward(self, x, context=None):
        self.check_input(x)
        y = x + self.shift
        var = (y * y).mean(-1, keepdim=True) - y.mean(-1, keepdim=True) ** 2
        return super().forward((y - y.mean(-1, keepdim=True)) / torch.sqrt(var + 1e-6))


class PlantedBf16Dtype(Clean):
    """Scales by a float32 tensor kept as a plain attribute: .to(bfloat16) misses it, the output turns float32."""

    def __init__(self, dim, num_heads, *, feat_size=None, qkv_bias: bool = True):
        super().__init__(dim, num_heads, feat_size=feat_size, qkv_bias=qkv_bias)
        self.scale_vec = torch.linspace(0.5, 1.5, dim)

    def forward(self, x, context=None):
        return super().forward(x) * self.scale_vec


class PlantedStateDict(Clean):
    """Random features in a buffer registered with persistent=False: not saved, redrawn by a fresh instance."""

    def __init__(self, dim, num_heads, *, feat_size=None, qkv_bias: bool = True):
        super().__init__(dim, num_heads, feat_size=feat_size, qkv_bias=qkv_bias)
        self.register_buffer("features", torch.randn(dim, dim) / dim**0.5, persistent=False)

    def forward(self, x, context=None):
        self.check_input(x)
        return super().forward(x @ self.features)

    def attention_macs(self, height, width):
        return super().attention_macs(height, width) + height * width * self.dim**2


class PlantedIgnoresChannels(Clean):
    """Meant to feed both channel halves to two groups, reads the first half twice: channels C/2.. never count."""

    def forward(self, x, context=None):
        C = self.check_input(x)[3]
        return super().forward(torch.cat([x[..., : C // 2], x[..., : C // 2], x[..., C - C % 2 :]], dim=-1))


class PlantedIgnoresBottomHalf(Clean):
    """A padding mask built with H // 2 instead of H: the bottom half of the real map is masked to zero."""

    def forward(self, x, context=None):
        H = self.check_input(x)[1]
        keep = (torch.arange(H, device=x.device) < H // 2).to(x.dtype)
        return super().forward(x * keep[:, None, None])


class PlantedDropsLastColumn(Clean):
    """An off-by-one clamp when gathering columns: the last column is replaced by the one before it."""

    def forward(self, x, context=None):
        W = self.check_input(x)[2]
        return super().forward(x[:, :, torch.arange(W).clamp(max=max(W - 2, 0))])


class PlantedZeroesOutputBottom(Clean):
    """Crops padding from the wrong end: the bottom half of the output is left at zero."""

    def forward(self, x, context=None):
        out = super().forward(x)
        H = out.shape[1]
        return torch.cat([out[:, : H - H // 2], torch.zeros_like(out[:, H - H // 2 :])], dim=1)


class DeclaredIgnoresChannels(PlantedIgnoresChannels):
    """The same channel split, declared: the kit exempts it and says so."""

    ignores: ClassVar[dict[str, str]] = {"channels": "only the first half of the channels is mixed (a planted example)"}


class CleanLinear(Mixer):
    """elu+1 linear attention (Katharopoulos et al., 2020): phi(q) (phi(k)^T v) / (phi(q) . sum_j phi(k_j)).

    No attention path to route: ``pick_backend`` only records ``reference``.
    """

    def __init__(self, dim: int, num_heads: int, *, feat_size: tuple[int, int] | None = None):
        super().__init__(dim, num_heads, feat_size=feat_size)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, context=None):
        B, H, W, C = self.check_input(x)
        self.pick_backend(x)
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = torch.nn.functional.elu(qkv[0]) + 1, torch.nn.functional.elu(qkv[1]) + 1, qkv[2]
        kv = k.transpose(-2, -1) @ v  # (B, h, d, d)
        norm = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, N, 1): n*d MACs per head
        out = (q @ kv) / norm
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))

    def attention_macs(self, height, width):
        n, c = height * width, self.dim
        return 4 * n * c * c + 2 * n * c * self.head_dim + n * c  # qkv, proj, k^T v, q (k^T v), normaliser


class PlantedLinearNoNormaliser(CleanLinear):
    """The formula forgets the normaliser q . sum_j k_j (n*C MACs): within 1% at dim 24 with 3 heads, 2.5% off
    at dim 8 with 2 heads."""

    def attention_macs(self, height, width):
        n, c = height * width, self.dim
        return 4 * n * c * c + 2 * n * c * self.head_dim


class Summary(nn.Module):
    """A per-stage context: one projected mean token per image, ``(B, H, W, C) -> (B, C)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(1, 2)))

    def attention_macs(self, height: int, width: int) -> int:
        return self.proj.in_features * self.proj.out_features


class CleanContext(Clean):
    """Adds the stage's summary token (the per-stage context) before attending."""

    @classmethod
    def build_context(cls, dim, num_heads, feat_size, knobs):
        return Summary(dim)

    def forward(self, x, context=None):
        self.check_input(x)
        return super().forward(x + context[:, None, None, :])


class PlantedContextInPlace(CleanContext):
    """Scales the shared context in place: every later block of the stage sees it changed."""

    def forward(self, x, context=None):
        self.check_input(x)
        context.mul_(0.5)
        return Clean.forward(self, x + context[:, None, None, :])


class PlantedContextIgnored(CleanContext):
    """Builds a context but never reads it: the context's parameters never train."""

    def forward(self, x, context=None):
        return Clean.forward(self, x)


@pytest.mark.parametrize("cls", [Clean, CleanContext, CleanLinear, DeclaredIgnoresChannels])
def test_clean_mechanisms_pass_every_check(cls):
    report = check_mechanism(cls)
    assert report.ok, str(report)
    assert [r.check for r in report.results] == list(CHECKS)


PLANTED = [
    (PlantedShape, "shape", "gave output (2, 64, 24)"),
    (PlantedNoInputCheck, "shape", "23 channels instead of 24 raises RuntimeError"),
    (PlantedBatchMixing, "batch", "changes with the other images of the batch"),
    (PlantedDeadParameter, "gradients", "gate get no gradient"),
    (PlantedIgnoresChannels, "dependence", "does not depend on input 12 of 24 channels: 12-23 (the second half)"),
    (PlantedIgnoresBottomHalf, "dependence", "does not depend on input 32 of 64 positions: rows 4-7 (the bottom half)"),
    (PlantedDropsLastColumn, "dependence", "does not depend on input 8 of 64 positions: column 7 (the last column)"),
    (PlantedZeroesOutputBottom, "dependence", "output 32 of 64 positions: rows 4-7 (the bottom half) stay the same"),
    (PlantedContextIgnored, "dependence", "does not depend on the stage context"),
    (PlantedLinearNoNormaliser, "macs", "(dim 8, 2 heads)"),
    (PlantedNondeterministic, "determinism", "two forward passes on the same input differ"),
    (PlantedMacs, "macs", "but FlopCounterMode counts"),
    (PlantedOddCrash, "sizes", "it crashes: IndexError"),
    (PlantedUnnamedRefusal, "sizes", "does not name the mechanism"),
    (PlantedBf16Cancellation, "dtypes", "bfloat16"),
    (PlantedBf16Dtype, "dtypes", "returns torch.float32 for bfloat16 input"),
    (PlantedStateDict, "state_dict", "loaded with the state_dict gives different outputs"),
    (PlantedContextInPlace, "harness", "modified the per-stage context stages.0.contexts"),
    (PlantedContextIgnored, "harness", "get no gradient"),
]


@pytest.mark.parametrize(("cls", "check", "message"), PLANTED, ids=[p[0].__name__ for p in PLANTED])
def test_kit_catches_planted_bug(cls, check, message):
    report = check_mechanism(cls)
    assert check in report.failed, str(report)
    result = report[check]
    assert message in result.detail, str(result)
    assert result.fix, "every failure says what to fix"
    assert check in str(report) and "FAIL" in str(report)


def test_planted_bugs_trip_their_own_check():
    """A bug is named by the check made for it, not only by a downstream crash (the clean parts still pass)."""
    assert check_mechanism(PlantedMacs).failed == ["macs"]
    assert check_mechanism(PlantedStateDict).failed == ["state_dict"]
    assert check_mechanism(PlantedDeadParameter).failed == ["gradients", "harness"]
    assert check_mechanism(PlantedBf16Dtype).failed == ["dtypes"]
    assert check_mechanism(PlantedBatchMixing).failed == ["batch"]
    assert check_mechanism(PlantedLinearNoNormaliser).failed == ["macs"]
    for cls in (PlantedIgnoresChannels, PlantedIgnoresBottomHalf, PlantedDropsLastColumn, PlantedZeroesOutputBottom):
        assert check_mechanism(cls).failed == ["dependence"], cls.__name__


def test_ignored_input_is_named_at_odd_sizes_too():
    """The probes run at odd maps: an H // 2 mask at 7 rows leaves rows 3-6, still named."""
    from attn_zoo.testing.dependence import describe_channels, describe_positions

    rows = torch.zeros(7, 9, dtype=torch.bool)
    rows[3:] = True
    assert describe_positions(rows) == "36 of 63 positions: rows 3-6 (the bottom half)"
    mixed = torch.zeros(4, 5, dtype=torch.bool)
    mixed[:, 0] = True
    mixed[2, 3] = True
    assert describe_positions(mixed) == "5 of 20 positions: column 0; 1 other position(s) (row, column) (2, 3)"
    chans = torch.zeros(24, dtype=torch.bool)
    chans[[0, 1, 2, 7]] = True
    assert describe_channels(chans) == "4 of 24 channels: 0-2, 7"


def test_declared_ignores_are_exempted_and_named():
    report = check_mechanism(DeclaredIgnoresChannels, checks=["dependence"])
    assert report.ok, str(report)
    detail = report["dependence"].detail
    assert detail.startswith("output depends on every input position at 8x8, 7x9, 13x11, 16x16")
    assert "exempted (declared in ignores): channels: only the first half of the channels is mixed" in detail
    with_context = check_mechanism(CleanContext, checks=["dependence"])["dependence"].detail
    assert "every input position, channel and the stage context" in with_context


def test_unknown_ignores_key_fails():
    bad = type("BadIgnores", (Clean,), {"ignores": {"tokens": "?"}})
    report = check_mechanism(bad, checks=["dependence"])
    assert "ignores declares 'tokens', which the kit does not know" in report["dependence"].detail
