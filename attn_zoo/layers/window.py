"""Window helpers shared by the windowed mechanisms (Swin, IWSA, GC-ViT): :class:`Windows` and its
:class:`WindowPlan` (pad, shift, partition, heads, masks, merge: the one window path they all take), the
lower-level steps it is made of, and the relative position bias table of Swin (also used by GC-ViT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn


def pad_to_multiple(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Zero-pad ``(B, H, W, C)`` at the bottom and right so H, W are multiples of ``window``.

    Bottom/right zero padding after the block's norm is what the official Swin detection code does.
    """
    H, W = x.shape[1:3]
    pad_h = (window[0] - H % window[0]) % window[0]
    pad_w = (window[1] - W % window[1]) % window[1]
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W, C) -> (B, nW, Mh*Mw, C)`` with windows in row-major order; H, W multiples of the window."""
    B, H, W, C = x.shape
    Mh, Mw = window
    x = x.view(B, H // Mh, Mh, W // Mw, Mw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // Mh) * (W // Mw), Mh * Mw, C)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B, nW, Mh*Mw, C) -> (B, H, W, C)``."""
    B, _, _, C = windows.shape
    Mh, Mw = window
    x = windows.view(B, height // Mh, width // Mw, Mh, Mw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, height, width, C)


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """``(Mh*Mw, Mh*Mw)`` index into a ``(2Mh-1)(2Mw-1)`` table of relative offsets (Swin's layout)."""
    Mh, Mw = window
    coords = torch.stack(torch.meshgrid(torch.arange(Mh), torch.arange(Mw), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + Mh - 1) * (2 * Mw - 1) + (rel[..., 1] + Mw - 1)


class RelativePositionBias(nn.Module):
    """A learned bias per head and relative offset inside a window: ``() -> (heads, N, N)``, N = Mh*Mw.

    Parameter name ``relative_position_bias_table`` as in the official Swin and GC-ViT code, so their
    weights map in by name.
    """

    def __init__(self, window: tuple[int, int], num_heads: int):
        super().__init__()
        self.window = tuple(window)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1), num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(self.window), persistent=False)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self) -> torch.Tensor:
        n = self.window[0] * self.window[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        # contiguous: added to every window's logits, a bias strided by the heads would not vectorise
        # (measured 0.97 -> 0.36 ms for the add at Swin-T stage 3, batch 8, 2 threads)
        return bias.permute(2, 0, 1).contiguous()


def merge_heads_reverse(out: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """``(B, nW, heads, Mh*Mw, d) -> (B, H, W, heads*d)``: heads merged and windows reversed in one copy.

    Equals ``window_reverse(out.transpose(2, 3).reshape(B, nW, N, heads * d), window, H, W)`` (two copies).
    """
    B, _, heads, _, d = out.shape
    Mh, Mw = window
    x = out.reshape(B, height // Mh, width // Mw, heads, Mh, Mw, d).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, height, width, heads * d)


class _GatherRows(torch.autograd.Function):
    """``src[:, index]`` along dim 1 for an injective ``index``. The backward gathers with ``inverse`` when the
    index is a permutation (one copy); otherwise it scatters into zeros (the rows never read get 0)."""

    @staticmethod
    def forward(ctx, src: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(index, inverse)
        ctx.rows = src.shape[1]
        return src.index_select(1, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        index, inverse = ctx.saved_tensors
        if inverse is not None:
            return grad.index_select(1, inverse), None, None
        out = grad.new_zeros(grad.shape[0], ctx.rows, *grad.shape[2:])
        return out.index_copy_(1, index, grad), None, None


def gather_rows(src: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, R, ...) -> (B, len(index), ...)``: rows ``index`` of ``src`` (each row at most once), one copy.

    ``inverse`` (with ``index[inverse] == arange(R)``) may be given when ``index`` is a permutation of all
    ``R`` rows; the backward is then one gather instead of a scatter into zeros.
    """
    return _GatherRows.apply(src, index, inverse)


def window_token_order(
    height: int, width: int, window: tuple[int, int], shift: int, heads: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Token permutations that replace pad + roll + :func:`window_partition` and its inverse by one gather each.

    For a map padded at the bottom/right to ``(Hp, Wp)`` (multiples of the window) and rolled by
    ``(-shift, -shift)``, returns ``(into, into_inverse, back, back_inverse)``:

    * ``into``, ``(Hp*Wp,)``: window-order token ``t = w*N + n`` (window ``w``, slot ``n``) is padded-map
      token ``into[t]``, so ``gather_rows(x_padded.view(B, Hp*Wp, C), into)`` equals
      ``window_partition(roll(x_padded, -shift)).view(B, nW*N, C)``.
    * ``back``, ``(H*W*heads,)``: for an attention output ``(B, nW, heads, N, d)`` viewed as rows of ``d``,
      ``gather_rows(out.view(B, nW*heads*N, d), back).view(B, H, W, heads*d)`` is the heads merged, the
      windows reversed, the roll undone and the padding cropped, in one copy (instead of four).
    * the inverses for the backward; ``back_inverse`` is ``None`` when padding is cropped (not a permutation).

    On CPU one ``index_select`` costs about as much as a roll along two axes and twice a strided copy, so
    this pays for shifted windows (roll + partition, and merge + reverse + roll) but not for unshifted ones.
    """
    Mh, Mw = window
    Hp, Wp = -(-height // Mh) * Mh, -(-width // Mw) * Mw
    position = torch.arange(Hp * Wp, device=device).view(1, Hp, Wp, 1)
    if shift:
        position = torch.roll(position, shifts=(-shift, -shift), dims=(1, 2))
    into = window_partition(position, window).reshape(-1)
    into_inverse = torch.empty_like(into)
    into_inverse[into] = torch.arange(into.numel(), device=device)  # padded-map token -> window-order token
    order = into_inverse.view(Hp, Wp)[:height, :width].reshape(-1)
    n = Mh * Mw
    w, slot = order // n, order % n
    back = ((w[:, None] * heads + torch.arange(heads, device=device)) * n + slot[:, None]).reshape(-1)
    back_inverse = None
    if (Hp, Wp) == (height, width):
        back_inverse = torch.empty_like(back)
        back_inverse[back] = torch.arange(back.numel(), device=device)
    return into, into_inverse, back, back_inverse


class WindowPlan:
    """How one ``height x width`` map is cut into windows, and put back: made by :meth:`Windows.plan`.

    The map is zero-padded at the bottom/right to ``(Hp, Wp)``, multiples of the window ``(Mh, Mw)``, rolled by
    ``(-shift, -shift)`` when ``shift`` is set (Swin's SW-MSA: pad first, then roll, as the official detection
    code), and cut into ``nW = Hp*Wp / N`` windows of ``N = Mh*Mw`` tokens in row-major order. Shifted plans
    move tokens with one precomputed gather each way (:func:`window_token_order`); unshifted ones with strided
    copies, which are cheaper there. Every window mechanism goes through the same steps:

    * :meth:`partition` ``(B, H, W, C) -> (B, nW, N, C)`` (pad + roll + partition);
    * :meth:`split_heads` ``(B, nW, N, parts*C) -> (parts, B, nW, heads, N, d)`` (q, k, v out of one projection);
    * :attr:`mask`: the additive logit mask for the shift and the padding, or None (see :meth:`Windows.plan`);
    * :meth:`merge` ``(B, nW, heads, N, d) -> (B, H, W, heads*d)`` (merge heads + reverse + roll back + crop), or
      :meth:`merge_heads` then :meth:`reverse` where a per-window step sits between them (GC-ViT's projection).
    """

    def __init__(
        self,
        height: int,
        width: int,
        window: tuple[int, int],
        heads: int,
        shift: int,
        device: torch.device,
    ):
        self.height, self.width = height, width
        self.window = (int(window[0]), int(window[1]))
        self.heads, self.shift, self.device = heads, shift, device
        Mh, Mw = self.window
        self.padded_size = (-(-height // Mh) * Mh, -(-width // Mw) * Mw)
        self.tokens = Mh * Mw
        self.num_windows = self.padded_size[0] * self.padded_size[1] // self.tokens
        self.is_padded = self.padded_size != (height, width)
        self.mask: torch.Tensor | None = None  # set by Windows.plan, from the mechanism's mask values
        self._orders: dict[int, tuple[torch.Tensor, ...]] = {}

    def _order(self, heads: int) -> tuple[torch.Tensor, ...]:
        if heads not in self._orders:
            self._orders[heads] = window_token_order(
                self.height, self.width, self.window, self.shift, heads, self.device
            )
        return self._orders[heads]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, Hp, Wp, C)``, zeros at the bottom/right (no copy when nothing is padded)."""
        return pad_to_multiple(x, self.window)

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` (or the already padded ``(B, Hp, Wp, C)``) ``-> (B, nW, N, C)``: pad, roll, partition."""
        x = self.pad(x)
        if not self.shift:
            return window_partition(x, self.window)
        into, into_inverse, _, _ = self._order(1)
        B, Hp, Wp, C = x.shape
        windows = gather_rows(x.reshape(B, Hp * Wp, C), into, into_inverse)
        return windows.view(B, self.num_windows, self.tokens, C)

    def split_heads(self, windows: torch.Tensor, parts: int) -> torch.Tensor:
        """``(B, nW, N, parts*heads*d) -> (parts, B, nW, heads, N, d)``: q, k, v of a fused projection."""
        B, nW, N, C = windows.shape
        d = C // (parts * self.heads)
        return windows.reshape(B, nW, N, parts, self.heads, d).permute(3, 0, 1, 4, 2, 5)

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """``(B, nW, heads, N, d) -> (B, H, W, heads*d)``: heads merged, windows reversed, roll undone, cropped.

        One copy: a gather (shifted) or a strided copy (:func:`merge_heads_reverse`); the crop is a view.
        """
        B, nW, heads, N, d = out.shape
        H, W = self.height, self.width
        if self.shift:
            _, _, back, back_inverse = self._order(heads)
            return gather_rows(out.reshape(B, nW * heads * N, d), back, back_inverse).view(B, H, W, heads * d)
        return merge_heads_reverse(out, self.window, *self.padded_size)[:, :H, :W]

    @staticmethod
    def merge_heads(out: torch.Tensor) -> torch.Tensor:
        """``(B, nW, heads, N, d) -> (B, nW, N, heads*d)`` (one copy), for a per-window step before :meth:`reverse`."""
        B, nW, heads, N, d = out.shape
        return out.transpose(2, 3).reshape(B, nW, N, heads * d)

    def reverse(self, windows: torch.Tensor) -> torch.Tensor:
        """``(B, nW, N, C) -> (B, H, W, C)``: inverse of :meth:`partition` (reverse, roll back, crop)."""
        B, nW, N, C = windows.shape
        H, W = self.height, self.width
        if self.shift:
            _, _, back, back_inverse = self._order(1)
            return gather_rows(windows.reshape(B, nW * N, C), back, back_inverse).view(B, H, W, C)
        return window_reverse(windows, self.window, *self.padded_size)[:, :H, :W, :]


class Windows:
    """The one window path of the window mechanisms (Swin, IWSA, GC-ViT): plans cached per map and device.

    ``Windows(window, heads, shift=0, shift_mask_value=-100.0, pad_mask_value=None).plan(H, W, device)`` gives
    the :class:`WindowPlan` of an ``H x W`` map. The mechanisms' own choices are parameters:

    Args:
        window: window side M, or ``(Mh, Mw)``; :meth:`plan` may override it per map (IWSA clamps it).
        heads: attention heads (for :meth:`WindowPlan.split_heads` and the fused merge).
        shift: cyclic shift of the padded map before partitioning (Swin's SW-MSA uses M // 2; 0 is none).
        shift_mask_value: logit added to pairs of tokens from different image regions of a shifted map;
            Swin's official code uses -100.0, not -inf.
        pad_mask_value: logit added to padded keys, or None to leave them in the softmax unmasked (Swin's
            official detection code and GC-ViT); IWSA masks them with ``-inf``, Swin's clean variant with its
            mask value. ``-inf`` is safe: the padding is shorter than the window, so every window keeps a
            real key.
    """

    def __init__(
        self,
        window: int | tuple[int, int],
        heads: int,
        *,
        shift: int = 0,
        shift_mask_value: float = -100.0,
        pad_mask_value: float | None = None,
    ):
        self.window = (window, window) if isinstance(window, int) else (int(window[0]), int(window[1]))
        self.heads = heads
        self.shift = shift
        self.shift_mask_value = shift_mask_value
        self.pad_mask_value = pad_mask_value
        self._plans: dict[tuple, WindowPlan] = {}

    def plan(self, height: int, width: int, device: torch.device, window: tuple[int, int] | None = None) -> WindowPlan:
        """The plan of a ``height x width`` map (cached), with ``window`` instead of the default if given.

        Its ``mask`` (float32; cast it to the logits' dtype) is None when nothing is masked, ``(nW, 1, N, N)``
        on a shifted map (``shift_mask_value`` between regions, ``pad_mask_value`` on padded keys if set), or
        ``(nW, 1, 1, N)`` when only padded keys are masked.
        """
        window = self.window if window is None else (int(window[0]), int(window[1]))
        key = (height, width, window, device)
        if key not in self._plans:
            plan = WindowPlan(height, width, window, self.heads, self.shift, device)
            plan.mask = self._mask(plan)
            self._plans[key] = plan
        return self._plans[key]

    def _mask(self, plan: WindowPlan) -> torch.Tensor | None:
        H, W, window, device = plan.height, plan.width, plan.window, plan.device
        (Mh, Mw), (Hp, Wp) = window, plan.padded_size
        s = self.shift
        pad_keys = None
        if self.pad_mask_value is not None and (Hp, Wp) != (H, W):
            valid = torch.zeros(1, Hp, Wp, 1, device=device)
            valid[:, :H, :W] = 1
            if s:
                valid = torch.roll(valid, shifts=(-s, -s), dims=(1, 2))
            pad_keys = window_partition(valid, window)[0, :, :, 0] == 0  # (nW, N)
        if not s:
            if pad_keys is None:
                return None
            mask = torch.zeros(pad_keys.shape, device=device, dtype=torch.float32)
            mask = mask.masked_fill(pad_keys, self.pad_mask_value)
            return mask[:, None, None, :]
        # label every position by the image region it came from; pairs with different labels are masked
        region = torch.zeros(1, Hp, Wp, 1, device=device)
        cuts_h = (slice(0, -Mh), slice(-Mh, -s), slice(-s, None))
        cuts_w = (slice(0, -Mw), slice(-Mw, -s), slice(-s, None))
        for i, (hs, ws) in enumerate((hs, ws) for hs in cuts_h for ws in cuts_w):
            region[:, hs, ws, :] = i
        labels = window_partition(region, window)[0, :, :, 0]  # (nW, N)
        mask = (labels.unsqueeze(1) != labels.unsqueeze(2)).float() * self.shift_mask_value
        if pad_keys is not None:
            mask = torch.where(pad_keys.unsqueeze(1), torch.full_like(mask, self.pad_mask_value), mask)
        return mask.unsqueeze(1)
