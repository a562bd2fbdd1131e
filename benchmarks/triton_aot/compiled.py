"""Compile a specialization for a GPU target with no GPU present, and read what came out.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` runs the whole
pipeline down to a cubin. From it this module reads ptxas's own report (registers, spills;
Triton prints it under ``TRITON_DUMP_PTXAS_LOG``), the shared memory, the PTX (the width of
every global load, traced back to the kernel argument it reads; fused multiply-adds) and
the SASS that ``nvdisasm`` (shipped in the triton wheel) prints: load widths, fp64
instructions, local-memory traffic, FMAs.

``nvdisasm`` spends about half a second starting, whatever it disassembles, so the SASS is
read in batches: the code sections of many cubins of one architecture, concatenated, in a
single raw-mode call (``-b SM90a``), split back by offset (SASS instructions are 16 bytes
on sm_70 and later, and every code section is a whole number of them).
"""

from __future__ import annotations

import io
import re
import struct
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from benchmarks.triton_aot.binding import Specialization

_INSTRUCTION_BYTES = 16


@dataclass
class PtxFacts:
    """What ptxas reported and what the PTX shows, for one (specialization, arch).

    row_load_bits / other_load_bits: width in bits of every ``ld.global`` in the PTX whose
    address derives from a (B, D) row argument, and of all the others (per-row weights,
    scalars, partial sums). ptx_fma: fused multiply-adds in the PTX. ptx_ieee_div_sqrt:
    the PTX has correctly rounded divisions or square roots (which ptxas expands with FMAs).
    """

    arch: int
    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    stack: int  # bytes of stack frame
    shared: int  # bytes of shared memory Triton allocates
    row_load_bits: list[int]
    other_load_bits: list[int]
    ptx_fma: int
    ptx_ieee_div_sqrt: bool
    enable_fp_fusion: bool
    compile_s: float
    ptxas_log: str


@dataclass
class SassFacts:
    """What the SASS shows. sass_load_bits: {width: count} of LDG instructions; fp64_arith /
    fp64_convert: fp64 arithmetic and conversion opcodes; sass_fma: FFMA/DFMA/HFMA2 with
    register operands; local_memory_ops: LDL/STL (spills or local arrays)."""

    sass_load_bits: dict[int, int]
    fp64_arith: list[str]
    fp64_convert: list[str]
    sass_fma: int
    local_memory_ops: int


@dataclass
class Analysis(PtxFacts, SassFacts):
    """Everything read from one compile (see PtxFacts and SassFacts)."""


@dataclass
class Compiled:
    facts: PtxFacts
    code: bytes  # the cubin's code section (SASS instructions)


_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_PTX_REG = re.compile(r"%\w+")
_PTX_PARAM = re.compile(r"\[\s*\w+_param_(\d+)\s*\]")
_PTX_INSTRUCTION = re.compile(r"^(@!?%\w+\s+)?([\w.:]+)\s*(.*);$")
_PTX_FMA = re.compile(r"^\s*(?:@!?%\w+\s+)?fma\.", re.M)
_PTX_IEEE_DIV_SQRT = re.compile(r"\b(div|sqrt|rcp)\.rn\.f(32|64)\b")
# Opcodes whose first operand is not a destination register.
_NO_DEST = ("st.", "bar.", "bra", "ret", "red.", "exit", "trap", "membar", "fence")
_SASS_INSTRUCTION = re.compile(
    r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;"
)
_FP64_ARITH = {"DADD", "DMUL", "DFMA", "DSETP", "DSET", "DMNMX", "DMMA"}
_CONVERT = {"F2F", "I2F", "F2I"}


# ------------------------------------------------------------------------------ PTX


def _split_operands(text: str) -> list[str]:
    """Comma-separated PTX operands, keeping ``{...}`` and ``[...]`` groups whole."""
    operands, depth, current = [], 0, ""
    for char in text:
        depth += char in "{["
        depth -= char in "}]"
        if char == "," and depth == 0:
            operands.append(current.strip())
            current = ""
        else:
            current += char
    return operands + [current.strip()] if current.strip() else operands


def _ptx_width(opcode: str) -> int:
    """Bits moved by a PTX ``ld`` opcode, e.g. ld.global.v4.b32 -> 128."""
    parts = opcode.split(".")
    lanes = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
    bits = next(int(p[1:]) for p in reversed(parts) if re.fullmatch(r"[bsuf]\d+", p))
    return lanes * bits


def ptx_global_loads(ptx: str, param_names: Sequence[str]) -> list[tuple[frozenset[str], int]]:
    """Every ``ld.global`` of the PTX: (kernel parameters its address derives from, bits).

    The address register is traced back through the instructions that define it to the
    ``ld.param`` of kernel parameters. LLVM's PTX defines each virtual register once (loop
    values are copied with ``mov``), so the union over all definitions is the set of
    parameters the address can depend on. ``param_names``: the PTX parameters in order
    (the kernel's non-constexpr parameters; Triton's scratch pointers follow them).
    """
    defs: dict[str, list[tuple[int | None, list[str]]]] = {}
    loads: list[tuple[str, int]] = []
    for raw in ptx.splitlines():
        line = raw.split("//")[0].strip()
        match = _PTX_INSTRUCTION.match(line)
        if not match or line.startswith("."):
            continue
        opcode, operands = match.group(2), _split_operands(match.group(3))
        if not operands or opcode.startswith(_NO_DEST):
            continue
        param = _PTX_PARAM.search(match.group(3)) if opcode.startswith("ld.param") else None
        uses = [r for op in operands[1:] for r in _PTX_REG.findall(op)]
        for reg in _PTX_REG.findall(operands[0]):
            defs.setdefault(reg, []).append((int(param.group(1)) if param else None, uses))
        if opcode.startswith("ld.global"):
            loads.append((_PTX_REG.findall(operands[-1])[0], _ptx_width(opcode)))
    result = []
    for address, bits in loads:
        sources: set[str] = set()
        seen, stack = set(), [address]
        while stack:
            reg = stack.pop()
            if reg in seen:
                continue
            seen.add(reg)
            for index, uses in defs.get(reg, []):
                if index is not None:
                    sources.add(param_names[index] if index < len(param_names) else "scratch")
                stack.extend(uses)
        result.append((frozenset(sources), bits))
    return result


# ----------------------------------------------------------------------------- SASS


def tool(name: str) -> str:
    """Path of a CUDA binary tool shipped in the triton wheel (ptxas, nvdisasm, cuobjdump)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not in this triton wheel (looked for {path})")
    return str(path)


def code_section(cubin: bytes) -> bytes:
    """The ``.text.<kernel>`` section of a single-kernel cubin (an ELF64 file)."""
    shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
    entsize, count, strndx = struct.unpack_from("<HHH", cubin, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", cubin, shoff + i * entsize) for i in range(count)]
    names_offset, names_size = headers[strndx][4], headers[strndx][5]
    names = cubin[names_offset : names_offset + names_size]
    texts = [
        cubin[offset : offset + size]
        for name, _, _, _, offset, size in headers
        if names[name:].startswith(b".text.")
    ]
    if len(texts) != 1 or len(texts[0]) % _INSTRUCTION_BYTES:
        raise ValueError(f"expected one code section of whole instructions, got {len(texts)}")
    return texts[0]


def disassemble(arch: int, codes: Sequence[bytes]) -> list[list[tuple[str, str]]]:
    """(opcode with modifiers, operands) of every SASS instruction, for each code section."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    starts, total = [], 0
    for code in codes:
        starts.append(total)
        total += len(code)
    with tempfile.NamedTemporaryFile(suffix=".bin") as raw:
        raw.write(b"".join(codes))
        raw.flush()
        name = "SM" + sm_arch_from_capability(arch).removeprefix("sm_")
        # -ndf: no dataflow analysis, which opcodes do not need (a third of the time).
        text = subprocess.run(
            [tool("nvdisasm"), "-b", name, "-ndf", raw.name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    instructions: list[list[tuple[str, str]]] = [[] for _ in codes]
    kernel = 0
    count = 0
    for line in text.splitlines():
        match = _SASS_INSTRUCTION.match(line)
        if not match:
            continue
        offset = int(match.group(1), 16)
        while kernel + 1 < len(codes) and offset >= starts[kernel + 1]:
            kernel += 1
        instructions[kernel].append((match.group(3), match.group(4)))
        count += 1
    if count * _INSTRUCTION_BYTES != total:
        raise RuntimeError(f"nvdisasm printed {count} instructions for {total} bytes of code")
    return instructions


def _sass_load_bits(opcode: str) -> int:
    for modifier in opcode.split(".")[1:]:
        if modifier in ("128", "64"):
            return int(modifier)
        if modifier in ("U16", "S16"):
            return 16
        if modifier in ("U8", "S8"):
            return 8
    return 32


def _is_fma(opcode: str, operands: str) -> bool:
    if opcode.split(".")[0] not in ("FFMA", "DFMA", "HFMA2"):
        return False
    # ptxas materialises constants as HFMA2.MMA Rx, -RZ, RZ, imm, imm: not arithmetic.
    sources = [s.strip().lstrip("-|") for s in operands.split(",")[1:]]
    return any(s.startswith("R") and s != "RZ" for s in sources)


def sass_facts(instructions: list[tuple[str, str]]) -> SassFacts:
    opcodes = [op for op, _ in instructions]
    base = [op.split(".")[0] for op in opcodes]
    return SassFacts(
        sass_load_bits=dict(Counter(_sass_load_bits(op) for op in opcodes if op.startswith("LDG"))),
        fp64_arith=sorted(
            {
                op
                for op, b in zip(opcodes, base, strict=True)
                if b in _FP64_ARITH or (b == "MUFU" and "64H" in op)
            }
        ),
        fp64_convert=sorted(
            {op for op, b in zip(opcodes, base, strict=True) if b in _CONVERT and "F64" in op}
        ),
        sass_fma=sum(_is_fma(op, operands) for op, operands in instructions),
        local_memory_ops=sum(b in ("LDL", "STL") for b in base),
    )


# -------------------------------------------------------------------------- compile


def _load_kernel(kernel: str):
    import importlib

    module, name = kernel.split(":")
    fn = getattr(importlib.import_module(module), name)
    if not hasattr(fn, "params"):
        raise RuntimeError(
            f"{kernel} is {type(fn).__name__}, not a compilable JITFunction: TRITON_INTERPRET "
            "was set when the kernels were defined in this process"
        )
    return fn


def compile_kernel(
    spec: Specialization, rows: tuple[str, ...], arch: int, fp_fusion: bool | None = None
) -> Compiled:
    """Compile ``spec`` for sm_``arch``; ``rows``: its (B, D) row parameters.

    Needs ``TRITON_DUMP_PTXAS_LOG=1`` and ``TRITON_ALWAYS_COMPILE=1`` (ptxas's report is
    printed only when ptxas runs). ``fp_fusion`` overrides the launch's
    ``enable_fp_fusion`` (to show that the FMA checks can fail).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _load_kernel(spec.kernel)
    names = kernel.arg_names
    constexprs = {(names.index(k),): v for k, v in spec.constexprs}
    attrs = {(names.index(k),): [list(a) for a in v] for k, v in spec.attrs}
    options = dict(spec.options)
    if fp_fusion is not None:
        options["enable_fp_fusion"] = fp_fusion
    source = ASTSource(kernel, dict(spec.signature), constexprs, attrs)
    log = io.StringIO()
    start = time.perf_counter()
    with redirect_stdout(log):
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    compile_s = time.perf_counter() - start
    report = log.getvalue()
    used, spill = _PTXAS_USED.findall(report), _PTXAS_SPILL.findall(report)
    if len(used) != 1 or len(spill) != 1:
        raise RuntimeError(f"{spec.name} sm_{arch}: no single ptxas report in:\n{report}")
    ptx = compiled.asm["ptx"]
    runtime_params = [name for name, typ in spec.signature if typ != "constexpr"]
    row_bits, other_bits = [], []
    for sources, bits in ptx_global_loads(ptx, runtime_params):
        (row_bits if sources & set(rows) else other_bits).append(bits)
    stack, stores, loads = (int(x) for x in spill[0])
    facts = PtxFacts(
        arch=arch,
        registers=int(used[0]),
        spill_stores=stores,
        spill_loads=loads,
        stack=stack,
        shared=int(compiled.metadata.shared),
        row_load_bits=row_bits,
        other_load_bits=other_bits,
        ptx_fma=len(_PTX_FMA.findall(ptx)),
        ptx_ieee_div_sqrt=bool(_PTX_IEEE_DIV_SQRT.search(ptx)),
        enable_fp_fusion=bool(compiled.metadata.enable_fp_fusion),
        compile_s=compile_s,
        ptxas_log=report.strip(),
    )
    return Compiled(facts, code_section(compiled.asm["cubin"]))
