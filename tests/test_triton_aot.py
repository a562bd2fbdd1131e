"""Every Triton specialization the launchers request, compiled ahead of time for sm_80 and
sm_90 on this CPU-only machine, and what ptxas and the SASS say about it.

``benchmarks/triton_aot.py`` drives the ``torch.ops.fastgp`` Triton kernels over a grid of
inputs on meta tensors (nothing runs), binds every recorded launch with Triton's own binder
and compiles each distinct specialization for both architectures, caching the analyses on
disk. The representative grid runs by default (about 100 specializations); the full grid
(every tile configuration x dtype x flag combination, about 1,100) is marked slow.

Each check lists every (kernel, specialization, arch) that breaks it. The checks must be
able to fail: ``test_checks_see_what_they_look_for`` shows that each detector fires on a
case built to trip it (an unaligned view, fp64 kernels, a compile with contraction on).
"""

from __future__ import annotations

import ast
import importlib
from collections import Counter
from pathlib import Path

import pytest

from benchmarks import triton_aot

ROOT = Path(__file__).resolve().parent.parent

# Spills ptxas reports that are known and accepted, keyed by (kernel, dtype, tile
# constexprs, arch): the reason, and the Triton versions whose ptxas spills there. None:
# the full grid compiles without a spill on Triton 3.9 and 3.6 since the large tile runs
# 16 warps and the finalize 8 (earlier, 8 and 4 spilled 4-16 bytes in 16 configurations).
# The list must stay exact: an entry none of whose compiled specializations spills under
# one of its versions fails ``test_known_spills_are_current``.
KNOWN_SPILLS: dict[tuple[str, str, str, int], tuple[str, set[str]]] = {}


def _spill_key(result) -> tuple[str, str, str, int]:
    spec = result.requested.spec
    tile = " ".join(f"{k}={v}" for k, v in spec.constexprs if k.startswith("BLOCK"))
    return (spec.name, spec.dtype(), tile, result.arch)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(False, id="representative"),
        pytest.param(True, id="full", marks=pytest.mark.slow),
    ],
)
def aot(request: pytest.FixtureRequest) -> triton_aot.Run:
    return triton_aot.run(full=request.param)


def _where(result: triton_aot.Result) -> str:
    spec = result.requested.spec
    return f"{spec.name} {spec.dtype()} {spec.describe()} sm_{result.arch}"


def _compiled(aot: triton_aot.Run) -> list[triton_aot.Result]:
    return [r for r in aot.results if r.analysis is not None]


def _aligned_rows(result: triton_aot.Result) -> bool:
    """Triton knows every row starts 16 bytes aligned: each (B, D) row argument is hinted
    16-byte aligned and D is hinted a multiple of 16."""
    spec = result.requested.spec
    attrs = dict(spec.attrs)
    aligned = ("tt.divisibility", 16)
    rows = result.requested.rows
    return bool(rows) and all(aligned in attrs.get(p, ()) for p in rows + ("D",))


def _unaligned_row(result: triton_aot.Result) -> bool:
    attrs = dict(result.requested.spec.attrs)
    return any(("tt.divisibility", 16) not in attrs.get(p, ()) for p in result.requested.rows)


# --------------------------------------------------------------- the launches themselves


def test_specializations_follow_tritons_rules(aot: triton_aot.Run) -> None:
    """Triton's binder agrees, launch by launch, with its documented rules (value 1 ->
    constexpr, multiples of 16 and aligned addresses -> hints, do_not_specialize kept)."""
    assert aot.derivation.launches > len(aot.derivation.requested) > 0
    assert aot.derivation.rule_mismatches == []


def test_every_launch_pins_fp_fusion_off(aot: triton_aot.Run) -> None:
    assert aot.derivation.unpinned == []
    fused = [_where(r) for r in _compiled(aot) if r.analysis.enable_fp_fusion]
    assert fused == [], "compiled with enable_fp_fusion=True"


def _is_triton_jit(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "jit"


def test_every_kernel_launch_goes_through_launch_helper() -> None:
    """No ``kernel[grid](...)`` of a ``@triton.jit`` function anywhere in fastgp except in
    ``launch.py``, so every launch gets the pinned options (and is seen by the recorder
    the other checks rely on)."""
    trees = {p: ast.parse(p.read_text(), str(p)) for p in sorted((ROOT / "fastgp").rglob("*.py"))}
    kernels = {
        node.name
        for tree in trees.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and any(map(_is_triton_jit, node.decorator_list))
    }
    assert {"_interpolate_kernel", "_penalty_backward_kernel"} <= kernels
    direct = []
    for path, tree in trees.items():
        if path.name == "launch.py" and path.parent.name == "triton":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                value = node.func.value
                name = value.id if isinstance(value, ast.Name) else getattr(value, "attr", None)
                if name in kernels:
                    direct.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}[...](...)")
    assert direct == []


def test_grid_reaches_every_configuration(aot: triton_aot.Run, request) -> None:
    """The grid requests what it claims: every dtype of every kernel; both tiles, packed and
    split rows, D = 1, D % 16 == 0 and not, an unaligned row (float32); every flag
    combination; a float64 bit pattern bound as i32 (center 0) and as i64; the finalize
    tile with L = 1, L % 16 == 0 and not, and at its column cap. The full grid also reaches
    every (BLOCK_B, BLOCK_D, num_warps) that ``interpolate._tile`` can return."""
    # The package re-exports functions named like its modules: fetch the module by path.
    tile = importlib.import_module("fastgp.backends.triton.interpolate")._tile
    seen: dict[str, set] = {}
    for req in aot.derivation.requested:
        spec = req.spec
        const = dict(spec.constexprs)
        attrs = dict(spec.attrs)
        warps = dict(spec.options)["num_warps"]
        facts = seen.setdefault(spec.name, set())
        facts.add(("dtype", spec.dtype()))
        facts.add(("flags",) + tuple(const.get(k) for k in ("HAS_REAL", "HAS_FAKE")))
        facts.add(("flags",) + tuple(const.get(k) for k in ("ONE_SIDED", "HAS_SCALE")))
        if "center_bits" in dict(spec.signature):
            facts.add(("center_bits", dict(spec.signature)["center_bits"]))
        if spec.name == "_penalty_finalize_kernel":
            facts.add(("L=1", const.get("L") == 1))
            facts.add(("L%16", ("tt.divisibility", 16) in attrs.get("L", ())))
            facts.add(("capped", const["BLOCK_L"] == 256))
            continue
        tiling = (const["BLOCK_B"], const["BLOCK_D"], warps)
        facts.add(("tile", tiling))
        if spec.dtype() == "fp32":
            facts.add(("warps", warps))
            facts.add(("split", const["BLOCK_B"] == 1))
            facts.add(("D=1", const.get("D") == 1))
            facts.add(("D%16", ("tt.divisibility", 16) in attrs.get("D", ())))
            facts.add(("unaligned row", any(not attrs.get(p) for p in req.rows)))
    dtypes = {("dtype", t) for t in ("fp32", "fp16", "bf16", "fp64")}
    row_kernels = {
        "_interpolate_kernel": {("flags", None, None)},
        "_interpolate_backward_kernel": {
            ("flags", True, False),
            ("flags", False, True),
            ("flags", True, True),
        },
        "_penalty_sum_squares_kernel": {("flags", None, None)},
        "_penalty_backward_kernel": {("flags", o, s) for o in (False, True) for s in (False, True)}
        | {("center_bits", "i32"), ("center_bits", "i64")},
    }
    fp32_facts = {(k, v) for k in ("split", "D=1", "D%16", "unaligned row") for v in (False, True)}
    fp32_facts |= {("warps", tile(1, 2)[2]), ("warps", tile(2**20, 2)[2])}  # both tiles
    missing = {}
    for name, flags in row_kernels.items():
        want = dtypes | flags | fp32_facts
        if request.node.callspec.id == "full":
            # Every (BLOCK_B, BLOCK_D, num_warps) _tile returns: one sample (small tile) and
            # 2**20 samples (large tile) of every power-of-two length up to 4096.
            want |= {("tile", tile(b, 2**k)) for b in (1, 2**20) for k in range(13)}
        missing[name] = sorted(want - seen.get(name, set()), key=str)
    finalize = {("dtype", "fp32"), ("dtype", "fp64"), ("L=1", True), ("capped", True)}
    finalize |= {("L%16", True), ("L%16", False), ("center_bits", "i32"), ("center_bits", "i64")}
    finalize |= {("flags", o, s) for o in (False, True) for s in (False, True)}
    missing["_penalty_finalize_kernel"] = sorted(
        finalize - seen.get("_penalty_finalize_kernel", set()), key=str
    )
    assert {k: v for k, v in missing.items() if v} == {}


# ----------------------------------------------------------------- the compiled kernels


def test_every_specialization_compiles(aot: triton_aot.Run) -> None:
    assert len(aot.results) == len(aot.derivation.requested) * len(triton_aot.ARCHS)
    failed = [f"{_where(r)}: {r.error}" for r in aot.results if r.error is not None]
    assert failed == []


def _known_spill(result) -> bool:
    import triton

    entry = KNOWN_SPILLS.get(_spill_key(result))
    return entry is not None and triton.__version__ in entry[1]


def test_no_register_spills(aot: triton_aot.Run) -> None:
    """ptxas reports no spill stores or loads and no stack frame, and the SASS has no
    local-memory instructions, except the spills listed in KNOWN_SPILLS for this Triton."""
    spilled = [
        f"{_where(r)}: {r.analysis.ptxas_log}"
        for r in _compiled(aot)
        if (r.analysis.spill_stores or r.analysis.spill_loads or r.analysis.stack)
        or r.analysis.local_memory_ops
        if not _known_spill(r)
    ]
    assert spilled == []


def test_known_spills_are_current(aot: triton_aot.Run) -> None:
    """Every KNOWN_SPILLS entry of this Triton version that the grid compiles still spills
    in at least one of its specializations (remove the entry once the kernel is fixed),
    and no spill exceeds 16 bytes each way."""
    spilling: dict[tuple, bool] = {}
    large = []
    for r in _compiled(aot):
        if _known_spill(r):
            spilled = max(r.analysis.spill_stores, r.analysis.spill_loads)
            spilling[_spill_key(r)] = spilling.get(_spill_key(r), False) or spilled > 0
            if spilled > 16:
                large.append(f"{_where(r)}: {spilled} bytes")
    stale = [key for key, did in spilling.items() if not did]
    assert stale == [], "no longer spills: remove its entry from KNOWN_SPILLS"
    assert large == []


def test_aligned_fp32_rows_load_128_bits(aot: triton_aot.Run) -> None:
    """For fp32 rows Triton knows to be 16-byte aligned, every global load of row data
    (traced in the PTX to the row argument it reads) is 128 bits wide, and the SASS has
    LDG.E.128 (ptxas kept the vectors)."""
    narrow, checked = [], 0
    for r in _compiled(aot):
        if r.requested.spec.dtype() != "fp32" or not _aligned_rows(r):
            continue
        checked += 1
        a = r.analysis
        if not a.row_load_bits or set(a.row_load_bits) != {128} or not a.sass_load_bits.get(128):
            narrow.append(f"{_where(r)}: rows {Counter(a.row_load_bits)}, SASS {a.sass_load_bits}")
    assert checked > 0
    assert narrow == []


def test_sass_loads_match_ptx_widths(aot: triton_aot.Run) -> None:
    """ptxas emits global loads of exactly the widths the PTX asks for (it neither splits
    the vectors nor widens the scalars), so the PTX attribution describes the SASS."""
    differ = [
        f"{_where(r)}: PTX {sorted(set(r.analysis.row_load_bits + r.analysis.other_load_bits))}"
        f", SASS {sorted(r.analysis.sass_load_bits)}"
        for r in _compiled(aot)
        if set(r.analysis.row_load_bits + r.analysis.other_load_bits)
        != set(r.analysis.sass_load_bits)
    ]
    assert differ == []


def test_no_fp64_arithmetic_below_fp64(aot: triton_aot.Run) -> None:
    """fp32/fp16/bf16 kernels do no fp64 arithmetic (DADD, DMUL, DFMA, DSETP, MUFU.*64H...).
    Conversions (the float64 bit patterns of the hyperparameters, F2F.F32.F64) are allowed."""
    found = [
        f"{_where(r)}: {r.analysis.fp64_arith}"
        for r in _compiled(aot)
        if r.requested.spec.dtype() != "fp64" and r.analysis.fp64_arith
    ]
    assert found == []


def test_no_fma_contraction(aot: triton_aot.Run) -> None:
    """No fused multiply-add in the PTX (every multiply and add is a separately rounded
    mul.rn / add.rn), and none in the SASS except inside ptxas's expansion of correctly
    rounded divisions and square roots (div.rn / sqrt.rn)."""
    fused = [
        f"{_where(r)}: PTX fma {r.analysis.ptx_fma}, SASS FMA {r.analysis.sass_fma}"
        for r in _compiled(aot)
        if r.analysis.ptx_fma or (r.analysis.sass_fma and not r.analysis.ptx_ieee_div_sqrt)
    ]
    assert fused == []


def test_second_run_is_served_from_the_cache(aot: triton_aot.Run, request) -> None:
    again = triton_aot.run(full=request.node.callspec.id == "full")
    assert again.compiled == 0
    assert [r.analysis for r in again.results] == [r.analysis for r in aot.results]


# ----------------------------------------------------------- the detectors can fire


def test_checks_see_what_they_look_for(aot: triton_aot.Run) -> None:
    """Each detector fires where it should: loads from an unaligned fp32 view are narrower
    than 128 bits; fp64 kernels show fp64 arithmetic; a compile with contraction on has
    FMAs in the PTX and the SASS."""
    compiled = _compiled(aot)
    unaligned = [r for r in compiled if r.requested.spec.dtype() == "fp32" and _unaligned_row(r)]
    assert unaligned, "the grid has no unaligned fp32 row"
    for r in unaligned:
        assert min(r.analysis.row_load_bits) < 128, _where(r)
    fp64 = [r for r in compiled if r.requested.spec.dtype() == "fp64"]
    assert fp64 and all(r.analysis.fp64_arith for r in fp64)
    target = next(
        r
        for r in compiled
        if r.requested.spec.name == "_interpolate_kernel"
        and r.requested.spec.dtype() == "fp32"
        and _aligned_rows(r)
    )
    contracted = triton_aot.compile_one(
        target.requested.spec, target.requested.rows, target.arch, fp_fusion=True
    )
    assert contracted.enable_fp_fusion
    assert contracted.ptx_fma > 0 and contracted.sass_fma > 0
    assert target.analysis.ptx_fma == 0 and target.analysis.sass_fma == 0
