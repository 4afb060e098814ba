"""The conformance checks. Each takes the :class:`~attn_zoo.testing.kit.Subject` and returns what it verified,
or raises :class:`~attn_zoo.testing.kit.Failure` with what is wrong and what to fix.

Every check runs each block position of the mechanism's ``block_pattern`` (Swin's W-MSA and SW-MSA), builds
the per-stage context where the mechanism has one, and works on CPU in float32 unless it says otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import io

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attn_zoo.backbone.config import MixerSpec, ModelConfig
from attn_zoo.backbone.harness import Backbone
from attn_zoo.backbone.presets import get_preset
from attn_zoo.errors import AttnZooError
from attn_zoo.measure.counting import count_model
from attn_zoo.testing.dependence import check_dependence
from attn_zoo.testing.kit import (
    BASE_SIZE,
    Failure,
    Subject,
    _eval,
    _jitter,
    check,
    describe,
    run,
)

SHAPE_SIZES = (BASE_SIZE, (8, 12))  # a non-square map catches swapped H and W
ODD_SIZES = ((1, 1), (2, 2), (3, 5), (7, 7), (13, 11), (6, 17))  # tiny, odd, no multiple of common windows
MACS_SIZES = (BASE_SIZE, (7, 9))
# the zoo_s32 stage-0 map: mechanisms that pool keys (SSA's r_n = 8) keep more than one key, so q and k matter
GRAD_SIZE = (16, 16)
MACS_TOLERANCE = 0.01
MACS_WIDTHS = ((8, 2), (16, 4), (12, 6), (32, 8))  # the second width of the macs check: the first that fits
BF16_TOLERANCE = 0.05  # relative L2 distance of the bfloat16 output from float32 (8-bit mantissa: ~0.4% per op)
HARNESS = {"dims": (24, 48, 96, 192), "heads": (3, 6, 12, 24), "img_size": 32}

FIX_CONTRACT = (
    "return the tokens in the input's layout: (B, H, W, C) -> (B, H, W, C) with the input's dtype; reshape "
    "back to (B, H, W, C) and crop any padding (x[:, :H, :W])"
)
FIX_SIZES = (
    "pad the map to what the mechanism needs and crop the output (attn_zoo.layers.window.pad_to_multiple), or "
    "refuse up front with a MechanismInputError naming the mechanism and the constraint "
    "(self.check_input(x, min_size=...) does both)"
)
FIX_CHECK_INPUT = (
    "call `B, H, W, C = self.check_input(x)` first in forward: it raises MechanismInputError naming the "
    "mechanism and what it expects"
)
FIX_BF16 = (
    "make tensors inside forward with dtype=x.dtype and device=x.device, and keep constant tensors as buffers "
    "(self.register_buffer) so .to(dtype) converts them"
)
FIX_PRECISION = (
    "bfloat16 keeps 8 bits of mantissa: avoid cancellations such as E[x^2] - E[x]^2 (centre first, or torch.var), "
    "large constants (mask with torch.finfo(x.dtype).min or -inf) and exp without subtracting the max"
)
FIX_CONTEXT = (
    "treat `context` as read-only: every block of a stage receives the same tensor, so compute "
    "`q = context * w`, never `context *= w`, `context.add_(...)` or slice assignment"
)


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _expect_tokens(out: object, x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise Failure(f"{what}: forward returned {type(out).__name__}, not a tensor", FIX_CONTRACT)
    if out.shape != x.shape:
        raise Failure(f"{what}: input {tuple(x.shape)} gave output {tuple(out.shape)}", FIX_CONTRACT)
    if out.dtype != x.dtype:
        raise Failure(f"{what}: input {x.dtype} gave output {out.dtype}", FIX_CONTRACT)
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise Failure(
            f"{what}: {bad} of {out.numel()} output values are NaN or inf",
            "look for divisions by zero, log/sqrt of non-positive values, or rows whose every logit is masked",
        )
    return out


def _modules(mixer: nn.Module, context: nn.Module | None) -> nn.Module:
    return nn.ModuleDict({"mixer": mixer, "context": context}) if context is not None else mixer


def tiny_harness(subject: Subject) -> ModelConfig:
    """A ``zoo_s32`` harness shrunk for the kit: 32x32 input, stage maps 16, 8, 4, 2, two blocks per stage
    (or the length of the mechanism's block pattern), no stochastic depth."""
    depth = max(2, len(subject.cls.block_pattern))
    return get_preset("zoo_s32").replace(
        name=f"kit_{subject.name}",
        dims=HARNESS["dims"],
        heads=HARNESS["heads"],
        depths=(depth,) * 4,
        img_size=HARNESS["img_size"],
        num_classes=10,
        drop_path_rate=0.0,
        mixer=MixerSpec(subject.name, subject.knobs),
    )


@check("shape", FIX_CONTRACT)
def check_shape(s: Subject) -> str:
    """(B, H, W, C) -> (B, H, W, C) with the input dtype, finite; context untouched; bad tensors refused clearly."""
    for occ in s.occurrences:
        for size in SHAPE_SIZES:
            try:
                mixer, ctx = s.build(size, occ)
            except AttnZooError as exc:
                if size == BASE_SIZE:
                    raise Failure(f"cannot be built for a {_size(size)} map: {exc}", FIX_SIZES) from None
                continue
            _eval(mixer, ctx)
            x = s.inputs(size)
            with torch.no_grad():
                context = ctx(x) if ctx is not None else None
                before = context.clone() if isinstance(context, torch.Tensor) else None
                try:
                    out = mixer(x, context)
                except AttnZooError:
                    if size == BASE_SIZE:
                        raise
                    continue  # refusing a size clearly is allowed; the sizes check looks closer
            _expect_tokens(out, x, f"at a {_size(size)} map{s.label(occ)}")
            if before is not None and not torch.equal(before, context):
                raise Failure(f"forward modified the per-stage context in place{s.label(occ)}", FIX_CONTEXT)
    mixer, ctx = s.build(BASE_SIZE)
    good = s.inputs()
    context = ctx(good) if ctx is not None else None
    bad_inputs = (
        (s.inputs()[..., :-1], f"a (B, H, W, C) tensor with {s.dim - 1} channels instead of {s.dim}"),
        (good.flatten(1, 2), "a (B, N, C) tensor of flattened tokens"),
    )
    for bad, what in bad_inputs:
        try:
            with torch.no_grad():
                out = mixer(bad, context)
        except AttnZooError:
            continue
        except Exception as exc:
            raise Failure(f"{what} raises {describe(exc)} instead of a clear error", FIX_CHECK_INPUT) from None
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise Failure(f"{what} is accepted without an error (output {shape})", FIX_CHECK_INPUT)
    return (
        f"(B, H, W, C) -> (B, H, W, C) at {', '.join(_size(z) for z in SHAPE_SIZES)}; "
        "wrong channels and wrong rank raise MechanismInputError"
    )


@check("sizes", FIX_SIZES)
def check_sizes(s: Subject) -> str:
    """Odd, tiny and non-multiple maps: the right output shape, or a clear AttnZooError naming the mechanism."""
    ran, refused = [], []
    for size in ODD_SIZES:
        for occ in s.occurrences:
            x = s.inputs(size)
            try:
                mixer, ctx = s.build(size, occ)
                _eval(mixer, ctx)
                with torch.no_grad():
                    out = run(mixer, ctx, x)
            except AttnZooError as exc:
                if s.name not in str(exc) and s.cls.__name__ not in str(exc):
                    raise Failure(
                        f"at a {_size(size)} map it refuses with {type(exc).__name__}: {exc} -- "
                        f"the message does not name the mechanism ({s.name!r})",
                        "start the message with the mechanism's name and say what sizes are allowed; "
                        "self.check_input(x, min_size=...) does that",
                    ) from None
                refused.append(f"{_size(size)} ({type(exc).__name__})")
                break
            except Exception as exc:
                raise Failure(f"at a {_size(size)} map{s.label(occ)} it crashes: {describe(exc)}", FIX_SIZES) from None
            _expect_tokens(out, x, f"at a {_size(size)} map{s.label(occ)}")
        else:
            ran.append(_size(size))
    text = f"ran at {', '.join(ran) or 'none'}"
    return text + (f"; refused clearly: {', '.join(refused)}" if refused else "")


@check("batch", "each image's output must depend on that image only")
def check_batch(s: Subject) -> str:
    """A batch of 3 gives the same outputs as the 3 images one at a time."""
    for occ in s.occurrences:
        mixer, ctx = s.build(BASE_SIZE, occ)
        _eval(mixer, ctx)
        x = s.inputs(batch=3)
        with torch.no_grad():
            together = run(mixer, ctx, x)
            alone = torch.cat([run(mixer, ctx, x[i : i + 1]) for i in range(3)])
        if together.shape != alone.shape:
            raise Failure(f"batch of 3 gives {tuple(together.shape)}, one at a time {tuple(alone.shape)}", FIX_CONTRACT)
        diff = (together - alone).abs().flatten(1).amax(1)
        scale = alone.abs().amax().clamp_min(1e-6)
        if (diff > 1e-5 + 1e-4 * scale).any():
            i = int(diff.argmax())
            raise Failure(
                f"image {i}'s output changes with the other images of the batch{s.label(occ)}: max difference "
                f"{float(diff[i]):.2e} between a batch of 3 and one image at a time",
                "reduce only over tokens and channels, never over dim 0: a mean/norm/softmax over the batch, "
                "BatchNorm in eval with batch statistics, or state kept from the previous call mixes images",
            )
    return "a batch of 3 equals the 3 images one at a time"


@check("gradients", "the backward pass must reach every parameter and the input")
def check_gradients(s: Subject) -> str:
    """Backward from a random projection of the output reaches every parameter (nonzero) and the input."""
    count = 0
    for occ in s.occurrences:
        mixer, ctx = s.build(GRAD_SIZE, occ)
        _jitter(mixer, ctx)
        x = s.inputs(GRAD_SIZE).requires_grad_(True)
        out = run(mixer, ctx, x)
        g = torch.Generator().manual_seed(2)
        (out * torch.randn(out.shape, generator=g)).sum().backward()
        dead, zero, broken = [], [], []
        for name, p in _modules(mixer, ctx).named_parameters():
            if not p.requires_grad:
                continue
            count += 1
            if p.grad is None:
                dead.append(name)
            elif not torch.isfinite(p.grad).all():
                broken.append(name)
            elif not p.grad.any():
                zero.append(name)
        if dead:
            raise Failure(
                f"parameter(s) {', '.join(dead)} get no gradient{s.label(occ)}: forward never uses them "
                "(or only under torch.no_grad() / .detach())",
                "use them in forward or delete them: an unused parameter still counts in the params budget",
            )
        if broken:
            raise Failure(f"parameter(s) {', '.join(broken)} get NaN/inf gradients{s.label(occ)}", FIX_PRECISION)
        if zero:
            raise Failure(
                f"parameter(s) {', '.join(zero)} get an all-zero gradient{s.label(occ)}",
                "they are multiplied by zero, masked out, or pass a step function (argmax, round, comparison); "
                "make them affect the output",
            )
        if x.grad is None or not x.grad.any():
            raise Failure(
                f"the output does not depend on the input{s.label(occ)}",
                "mix the input tokens (x), not only parameters",
            )
    return f"all {count} parameters and the input get finite, nonzero gradients at {_size(GRAD_SIZE)}"


check("dependence", "every input position and channel (and the context, where read) must reach the output")(
    check_dependence
)


@check("determinism", "forward must be a pure function of the input, the parameters and the buffers")
def check_determinism(s: Subject) -> str:
    """Same seed -> same parameters; the same input twice -> bitwise the same output (eval, CPU)."""
    for occ in s.occurrences:
        (m1, c1), (m2, c2) = s.build(BASE_SIZE, occ, seed=0), s.build(BASE_SIZE, occ, seed=0)
        sd1, sd2 = _modules(m1, c1).state_dict(), _modules(m2, c2).state_dict()
        differ = [k for k in sd1 if not torch.equal(sd1[k], sd2[k])]
        if differ:
            raise Failure(
                f"two instances built after torch.manual_seed(0) differ in {', '.join(differ[:3])}",
                "draw initial values from torch's generator only (torch.randn, nn.init.*), never from random, "
                "numpy or the clock, so that a cell's seed fixes the model",
            )
        _eval(m1, c1, m2, c2)
        x = s.inputs()
        with torch.no_grad():
            a, b, c = run(m1, c1, x), run(m1, c1, x), run(m2, c2, x)
        if not torch.equal(a, b):
            raise Failure(
                f"two forward passes on the same input differ (max |diff| {float((a - b).abs().max()):.2e})"
                f"{s.label(occ)}",
                "no random numbers in forward (torch.rand/randn, F.dropout without `training=self.training`) and "
                "no state that changes between calls; draw fixed random tensors once in __init__ as buffers",
            )
        if not torch.equal(a, c):
            raise Failure(
                f"two instances with the same parameters and buffers give different outputs{s.label(occ)}",
                "keep every tensor forward reads in a parameter or a registered buffer",
            )
    return "same seed, same parameters; the same input twice gives bitwise the same output"


def _compare_macs(declared: object, counted: int, what: str, label: str) -> None:
    try:
        declared = int(declared)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise Failure(f"{what} returned {declared!r}, not a number", "return an int") from None
    if abs(declared - counted) > MACS_TOLERANCE * max(counted, declared, 1):
        off = (declared - counted) / max(counted, 1)
        raise Failure(
            f"{what} = {declared:,} but FlopCounterMode counts {counted:,} multiply-accumulates ({off:+.1%}){label}",
            "count every matmul, linear, conv, einsum and scaled_dot_product_attention of forward for ONE image, "
            "on the padded map if you pad (FlopCounterMode counts one MAC per multiply-add; norms, softmax and "
            f"elementwise ops count nothing); allowed difference {MACS_TOLERANCE:.0%}",
        )


@check("macs", "declare attention_macs(self, height, width) -> int")
def check_macs(s: Subject) -> str:
    """The declared ``attention_macs(H, W)`` matches FlopCounterMode within 1% at two widths and head counts
    (a term that scales differently, e.g. a normaliser of n*C MACs, cannot hide under the tolerance at both),
    alone and in the harness."""
    checked = _macs_at(s, "")
    widths = [f"dim {s.dim}/{s.num_heads} heads"]
    other = _other_width(s)
    if other is not None:
        label = f" (dim {other.dim}, {other.num_heads} heads)"
        checked += _macs_at(other, label)
        widths.append(f"dim {other.dim}/{other.num_heads} heads")
    _harness_macs(s)
    where = ", ".join(sorted(set(checked)))
    return (
        f"formula within {MACS_TOLERANCE:.0%} of FlopCounterMode at {where} with {' and '.join(widths)}, "
        "and summed in the harness"
    )


def _other_width(s: Subject) -> Subject | None:
    """The first of :data:`MACS_WIDTHS` that differs from the subject in both width and heads and builds."""
    for dim, heads in MACS_WIDTHS:
        if dim == s.dim or heads == s.num_heads:
            continue
        other = dataclasses.replace(s, dim=dim, num_heads=heads)
        try:
            other.build(BASE_SIZE)
        except AttnZooError:
            continue  # the mechanism's knobs constrain the heads (MSDA: a multiple of the dilations)
        return other
    return None


def _macs_at(s: Subject, width: str) -> list[str]:
    checked = []
    for occ in s.occurrences:
        for size in MACS_SIZES:
            try:
                mixer, ctx = s.build(size, occ)
                _eval(mixer, ctx)
                x = s.inputs(size, batch=1)
                with torch.no_grad():
                    context = ctx(x) if ctx is not None else None
                    with FlopCounterMode(display=False) as counter:
                        mixer(x, context)
            except AttnZooError:
                if size == BASE_SIZE:
                    raise
                continue
            try:
                declared = mixer.attention_macs(*size)
            except NotImplementedError:
                raise Failure(
                    "declares no attention_macs(height, width) formula",
                    "implement attention_macs(self, height, width) -> int: the multiply-accumulates of forward for "
                    "one image at a height x width map, projections included (budgets and tables use it)",
                ) from None
            _compare_macs(declared, counter.get_total_flops() // 2, f"attention_macs{size}", s.label(occ) + width)
            if ctx is not None and hasattr(ctx, "attention_macs"):
                with torch.no_grad(), FlopCounterMode(display=False) as counter:
                    ctx(x)
                name = f"the context's attention_macs{size}"
                _compare_macs(ctx.attention_macs(*size), counter.get_total_flops() // 2, name, width)
            checked.append(_size(size))
    return checked


def _harness_macs(s: Subject) -> None:
    """count_model's attention MACs (mixers and stage contexts) against the declared formulas at each stage."""
    torch.manual_seed(0)
    model = Backbone(tiny_harness(s))
    owned = [
        (f"stages.{i}.blocks.{j}.mixer", b.mixer) for i, st in enumerate(model.stages) for j, b in enumerate(st.blocks)
    ]
    owned += [(f"stages.{i}.contexts.{n}", c) for i, st in enumerate(model.stages) for n, c in st.contexts.items()]
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(id(mod), tuple(args[0].shape[1:3])))
        for _, m in owned
    ]
    try:
        counted = count_model(model, HARNESS["img_size"])["attention_macs"]
    finally:
        for hook in hooks:
            hook.remove()
    declared = 0
    for name, module in owned:
        if not hasattr(module, "attention_macs"):
            raise Failure(
                f"the stage context {name} ({type(module).__name__}) declares no attention_macs(height, width), "
                "but its MACs count as attention MACs",
                "give the context module an attention_macs(self, height, width) -> int method for one image",
            )
        declared += int(module.attention_macs(*sizes[id(module)]))
    _compare_macs(declared, counted, "the formulas summed over the harness", " (tiny zoo_s32, 32x32 input)")


@check("dtypes", FIX_BF16)
def check_dtypes(s: Subject) -> str:
    """float32 and bfloat16: finite, the input's dtype out, bfloat16 within 5% (relative L2) of float32."""
    worst = 0.0
    for occ in s.occurrences:
        mixer, ctx = s.build(BASE_SIZE, occ)
        _eval(mixer, ctx)
        x = s.inputs()
        with torch.no_grad():
            ref = _expect_tokens(run(mixer, ctx, x), x, f"in float32{s.label(occ)}")
            low = copy.deepcopy(mixer).to(torch.bfloat16)
            low_ctx = copy.deepcopy(ctx).to(torch.bfloat16) if ctx is not None else None
            xb = x.to(torch.bfloat16)
            try:
                out = run(low, low_ctx, xb)
            except Exception as exc:
                raise Failure(f"fails in bfloat16{s.label(occ)}: {describe(exc)}", FIX_BF16) from None
        if not isinstance(out, torch.Tensor) or out.dtype != torch.bfloat16:
            got = out.dtype if isinstance(out, torch.Tensor) else type(out).__name__
            raise Failure(f"returns {got} for bfloat16 input{s.label(occ)}", FIX_BF16)
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out)).sum())
            raise Failure(
                f"{bad} of {out.numel()} outputs are NaN/inf in bfloat16 while float32 is finite{s.label(occ)}",
                FIX_PRECISION,
            )
        err = float((out.float() - ref).norm() / ref.norm().clamp_min(1e-12))
        if err > BF16_TOLERANCE:
            raise Failure(
                f"the bfloat16 output is {err:.1%} away from float32 (relative L2; allowed {BF16_TOLERANCE:.0%})"
                f"{s.label(occ)}",
                FIX_PRECISION,
            )
        worst = max(worst, err)
    return f"float32 and bfloat16 finite and in the input's dtype; bfloat16 within {worst:.2%} of float32"


@check("state_dict", "the state_dict must hold every tensor forward reads")
def check_state_dict(s: Subject) -> str:
    """Save, load into a fresh instance built with another seed: the same outputs, bitwise."""
    for occ in s.occurrences:
        m1, c1 = s.build(BASE_SIZE, occ, seed=0)
        _jitter(m1, c1)
        buffer = io.BytesIO()
        torch.save(_modules(m1, c1).state_dict(), buffer)
        buffer.seek(0)
        try:
            state = torch.load(buffer, weights_only=True)
        except Exception as exc:
            raise Failure(
                f"the state_dict does not load with torch.load(weights_only=True): {describe(exc)}",
                "keep only tensors in the state_dict (no get_extra_state with Python objects)",
            ) from None
        m2, c2 = s.build(BASE_SIZE, occ, seed=1)
        try:
            _modules(m2, c2).load_state_dict(state, strict=True)
        except Exception as exc:
            raise Failure(
                f"load_state_dict into a fresh instance fails{s.label(occ)}: {describe(exc)}",
                "the state_dict's keys and shapes must depend only on the constructor arguments",
            ) from None
        _eval(m1, c1, m2, c2)
        x = s.inputs()
        with torch.no_grad():
            a, b = run(m1, c1, x), run(m2, c2, x)
        if not torch.equal(a, b):
            raise Failure(
                f"a fresh instance loaded with the state_dict gives different outputs (max |diff| "
                f"{float((a - b).abs().max()):.2e}){s.label(occ)}",
                "some state is outside the state_dict: a tensor attribute that is not a buffer, or a buffer "
                "registered with persistent=False that is random; register it with "
                "self.register_buffer(name, tensor) (persistent), or make it a fixed function of the knobs",
            )
    return "save, load into a fresh instance (another seed), same outputs bitwise"


@check("harness", "the mechanism must run in the shared harness at every stage, forward and backward")
def check_harness(s: Subject) -> str:
    """Forward (train and eval) and backward through a tiny 4-stage zoo_s32; contexts read-only; every
    mixer and context parameter gets a gradient."""
    torch.manual_seed(0)
    config = tiny_harness(s)
    try:
        model = Backbone(config)
    except AttnZooError as exc:
        raise Failure(f"the tiny zoo_s32 harness cannot be built: {exc}", FIX_SIZES) from None
    sizes: dict[int, tuple[int, int]] = {}
    produced: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    hooks = []
    for i, stage in enumerate(model.stages):
        hooks.append(stage.register_forward_hook(lambda mod, args, out, i=i: sizes.__setitem__(i, out.shape[1:3])))
        for name, ctx in stage.contexts.items():
            hooks.append(
                ctx.register_forward_hook(
                    lambda mod, args, out, where=f"stages.{i}.contexts.{name}": (
                        produced.append((where, out, out.detach().clone())) if isinstance(out, torch.Tensor) else None
                    )
                )
            )
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, config.in_chans, config.img_size, config.img_size, generator=g)
    labels = torch.randint(0, config.num_classes, (2,), generator=g)
    try:
        model.train()
        try:
            logits = model(images)
        except Exception as exc:
            raise Failure(f"forward through the harness fails: {describe(exc)}", FIX_SIZES) from None
        for where, out, copy_ in produced:
            if not torch.equal(out.detach(), copy_):
                raise Failure(f"a block modified the per-stage context {where} in place", FIX_CONTEXT)
        loss = F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise Failure("the harness loss is not finite at initialisation", FIX_PRECISION)
        try:
            loss.backward()
        except Exception as exc:
            raise Failure(f"backward through the harness fails: {describe(exc)}", FIX_CONTEXT) from None
        missing = [
            n
            for n, p in model.named_parameters()
            if p.requires_grad and p.grad is None and (".mixer." in n or ".contexts." in n)
        ]
        if missing:
            raise Failure(
                f"inside the harness {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} get no gradient",
                "every parameter of the mixer and of its per-stage context must affect the output: use it in "
                "forward or delete it; for a context module, read `context` in forward or return None from "
                "build_context",
            )
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    maps = ", ".join(f"{h}x{w}" for h, w in (sizes[i] for i in sorted(sizes)))
    contexts = sum(len(stage.contexts) for stage in model.stages)
    return (
        f"train forward + backward and eval forward in a tiny zoo_s32 (stage maps {maps}; "
        f"{len(model.mixers())} mixers, {contexts} stage contexts)"
    )
