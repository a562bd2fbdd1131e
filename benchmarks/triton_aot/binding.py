"""What Triton compiles for a recorded launch, from Triton's own launch-time binder.

``JITFunction.run`` binds the arguments of a launch before it compiles: an integer equal
to 1 becomes a constexpr, divisibility by 16 of an integer or of a pointer's address becomes
a ``tt.divisibility`` hint, ``do_not_specialize`` parameters are left alone. ``bind`` runs
that same binder on a launch recorded by ``fastgp.backends.triton.launch.recording``, with no
GPU; ``rule_mismatches`` re-derives the result from the rules as documented, as a check that
the binder does what the kernels' comments assume. A meta tensor's ``data_ptr()`` is its
storage offset in bytes, i.e. the address of a view into an aligned allocation (CUDA
allocations are 512-byte aligned), so a view that starts off alignment binds as on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.triton_aot.grid import calls

ARCH_FOR_BINDING = 90  # the binder's backend; CUDA binds alike for every capability


@dataclass(frozen=True)
class Specialization:
    """What Triton compiles for a launch: its own binder's signature, constexprs and attrs.

    kernel: "module:name" of the ``@triton.jit`` function. signature: (parameter, Triton type)
    for every parameter ("constexpr" for compile-time ones). constexprs: (parameter, value).
    attrs: (parameter, ((attribute, value), ...)), e.g. ("D", (("tt.divisibility", 16),)).
    options: the launch options passed (num_warps, enable_fp_fusion, debug).
    source_hash: Triton's hash of the kernel source and the functions it calls.
    """

    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]
    attrs: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    options: tuple[tuple[str, Any], ...]
    source_hash: str

    @property
    def name(self) -> str:
        return self.kernel.split(":")[1]

    def dtype(self) -> str:
        """Triton type of the first pointer argument (the kernel's input data), e.g. "fp32"."""
        return next(t[1:] for _, t in self.signature if t.startswith("*"))

    def describe(self) -> str:
        """Short human form: constexprs, integer hints, unaligned pointers, float64 bit
        patterns bound as i32, warps."""
        const = dict(self.constexprs)
        attrs = dict(self.attrs)
        parts = [f"{k}={v}" for k, v in self.constexprs]
        for name, typ in self.signature:
            if typ in ("i32", "i64") and attrs.get(name):
                parts.append(f"{name}%16")
            if name.endswith("_bits") and typ == "i32":  # a float64 bit pattern of 0.0
                parts.append(f"{name}:i32")
            if typ.startswith("*") and not attrs.get(name) and name not in const:
                parts.append(f"{name}:unaligned")
        parts.append(f"warps={dict(self.options)['num_warps']}")
        return " ".join(parts)


@dataclass
class Requested:
    """A specialization and what asked for it: the calls, and its (B, D) row arguments."""

    spec: Specialization
    rows: tuple[str, ...]  # pointer parameters that receive a (B, D) row view
    calls: list[str] = field(default_factory=list)


def _json_value(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def bind(launch, backend) -> tuple[Specialization, tuple[str, ...]]:
    """Run Triton's binder on one recorded launch, as ``JITFunction.run`` does before compiling."""
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    from triton import knobs

    kwargs = dict(launch.meta, debug=bool(kernel.debug or knobs.runtime.debug))
    bound, specialization, options = binder(*launch.args, **kwargs)
    _, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, options
    )
    names = kernel.arg_names
    constexpr_names = {names[path[0]]: value for path, value in constexprs.items()}
    spec = Specialization(
        kernel=f"{kernel.fn.__module__}:{kernel.fn.__name__}",
        signature=tuple(signature.items()),
        constexprs=tuple((k, _json_value(v)) for k, v in constexpr_names.items()),
        attrs=tuple(
            (names[path[0]], tuple((a, _json_value(v)) for a, v in attr))
            for path, attr in attrs.items()
        ),
        options=tuple(sorted(options.items())),
        source_hash=kernel.cache_key,
    )
    values = dict(zip(names, launch.args, strict=False))
    b, d = values.get("B"), values.get("D")
    rows = tuple(
        name
        for name, value in values.items()
        if hasattr(value, "shape") and value.dim() == 2 and tuple(value.shape) == (b, d)
    )
    return spec, rows


_TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


def _int_type(value: int) -> str:
    if -(2**31) <= value < 2**31:
        return "i32"
    return "i64" if -(2**63) <= value < 2**63 else "u64"


def rule_mismatches(launch, spec: Specialization) -> list[str]:
    """Where Triton's binder disagrees with the rules as documented, for one launch.

    The rules (``triton/runtime/jit.py``): a tensor is a pointer to its dtype, hinted 16-byte
    aligned when its address is a multiple of 16; an integer is i32 (i64 past 32 bits),
    a constexpr when it equals 1 and hinted divisible when a multiple of 16, unless the
    kernel lists it in ``do_not_specialize``; constexpr parameters take the launch's values.
    """
    kernel = launch.kernel
    keep = set(kernel.do_not_specialize or ())
    keep_alignment = set(kernel.do_not_specialize_on_alignment or ())
    signature, constexprs, attrs = dict(spec.signature), dict(spec.constexprs), dict(spec.attrs)
    values = dict(zip(kernel.arg_names, launch.args, strict=False))
    problems = []
    for name in kernel.arg_names:
        if name not in values:  # a constexpr parameter, passed by keyword
            expected_type, expected_const, hinted = "constexpr", launch.meta[name], False
        elif hasattr(values[name], "data_ptr"):
            tensor = values[name]
            expected_type = "*" + _TRITON_DTYPES[str(tensor.dtype).removeprefix("torch.")]
            expected_const = None
            hinted = tensor.data_ptr() % 16 == 0 and name not in keep_alignment
        else:
            value = values[name]
            specialize = name not in keep
            expected_const = 1 if specialize and value == 1 else None
            expected_type = "constexpr" if expected_const is not None else _int_type(value)
            hinted = specialize and value != 1 and value % 16 == 0
        got_hint = ("tt.divisibility", 16) in attrs.get(name, ())
        if signature[name] != expected_type:
            problems.append(f"{name}: type {signature[name]}, expected {expected_type}")
        if constexprs.get(name) != expected_const:
            problems.append(f"{name}: constexpr {constexprs.get(name)}, expected {expected_const}")
        if got_hint != hinted:
            problems.append(f"{name}: divisibility hint {got_hint}, expected {hinted}")
    return [f"{spec.name} ({describe_args(launch)}): {p}" for p in problems]


def describe_args(launch) -> str:
    return ", ".join(
        f"{n}={tuple(v.shape)}@{v.data_ptr()}" if hasattr(v, "data_ptr") else f"{n}={v}"
        for n, v in zip(launch.kernel.arg_names, launch.args, strict=False)
    )


@dataclass
class Derivation:
    """The distinct specializations of a grid, and what checking the launches found."""

    requested: list[Requested]
    launches: int
    rule_mismatches: list[str]  # see ``rule_mismatches``
    unpinned: list[str]  # launches whose enable_fp_fusion was not False


def derive(full: bool) -> Derivation:
    """Record every launch of ``calls(full)``, bind each one and check it against the rules."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    from fastgp.backends.triton.launch import recording

    backend = make_backend(GPUTarget("cuda", ARCH_FOR_BINDING, 32))
    found: dict[Specialization, Requested] = {}
    count, mismatches, unpinned = 0, [], []
    for call in calls(full):
        with recording(execute=False) as launches:
            call.run()
        for launch in launches:
            count += 1
            if launch.meta.get("enable_fp_fusion") is not False:
                unpinned.append(f"{call.label}: {launch.kernel.fn.__name__} {launch.meta}")
            spec, rows = bind(launch, backend)
            mismatches += rule_mismatches(launch, spec)
            entry = found.setdefault(spec, Requested(spec, rows))
            entry.calls.append(call.label)
    return Derivation(list(found.values()), count, mismatches, unpinned)
