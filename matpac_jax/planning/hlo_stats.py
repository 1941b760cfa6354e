"""What a step's HLO does, read from its text: matmul FLOPs and collectives.

XLA's own cost analysis is per backend (none on GPU) and counts a loop or a
shared computation once; the counts here walk the call graph of the lowered
module (before any backend optimisation), so every target and the CPU agree
on the FLOPs of one program. Collectives are read from the compiled
(partitioned) module, where they exist.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict

BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
         "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
         "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "s4": 1, "u4": 1}
_SHAPE = re.compile(r"\b(" + "|".join(sorted(BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")
_IS_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s")
_HEADER = re.compile(r"^\s*(ENTRY\s+)?%?([\w.\-]+)\s")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in _SHAPE.findall(text)]


def nbytes(shape: tuple[str, tuple[int, ...]]) -> int:
    return BYTES[shape[0]] * math.prod(shape[1])


def _computations(hlo: str) -> tuple[dict[str, list[str]], str | None]:
    """{computation name: its instructions, one line each}, and the entry's
    name. An instruction whose attributes span lines (a Pallas kernel's
    metadata and cost estimate) is joined into one line."""
    comps, entry, name = {}, None, None
    for line in hlo.splitlines():
        if _IS_INSTR.match(line):
            if name is not None:
                comps[name].append(line)
        elif line.rstrip().endswith("{") and (m := _HEADER.match(line)):
            name = m[2]
            comps[name] = []
            entry = name if m[1] else entry
        elif line.strip() == "}":
            name = None
        elif name is not None and comps[name] and line.strip():
            comps[name][-1] += " " + line.strip()
    return comps, entry


def _dims_attr(rest: str, key: str) -> list[int]:
    m = re.search(key + r"=\{([\d,]*)\}", rest)
    return [int(d) for d in m[1].split(",") if d] if m else []


def _operands(rest: str) -> list[str]:
    """Operand names of `op(a, b), attrs...` ('%' and inline types dropped)."""
    depth, end = 0, len(rest)
    for i, ch in enumerate(rest):
        depth += ch in "([{"
        if ch in ")]}":
            if depth == 0:
                end = i
                break
            depth -= 1
    return [a.split()[-1].lstrip("%") for a in re.split(r",\s*(?![^\[{(]*[\]})])", rest[:end])
            if a.strip()]


def _op_flops(op: str, result: str, rest: str, known: dict) -> float:
    def operand(i):
        names = _operands(rest)
        return known.get(names[i], [None])[0] if i < len(names) else None

    out = shapes(result)
    if op == "dot":
        lhs = operand(0)
        if not out or lhs is None:
            return 0.0
        contract = math.prod(lhs[1][d] for d in _dims_attr(rest, "lhs_contracting_dims"))
        return 2.0 * math.prod(out[0][1]) * contract
    if op == "convolution":
        kernel, m = operand(1), re.search(r"dim_labels=\w+_(\w+)->", rest)
        if not out or kernel is None or not m:
            return 0.0
        per_output = math.prod(s for s, c in zip(kernel[1], m[1]) if c != "o")
        return 2.0 * math.prod(out[0][1]) * per_output
    if op == "custom-call" and (m := re.search(r'"cost_estimate": \{[^}]*"flops":\s*(\d+)', rest)):
        return float(m[1])  # a Pallas kernel's declared cost (models/attention_kernel.py)
    if op == "custom-call" and "__cudnn$fmha" in rest:
        q, k = operand(0), operand(1)  # BTNH: 4 B N T S H per forward pass
        if q is None or k is None:
            return 0.0
        fwd = 4.0 * math.prod(q[1]) * k[1][1]
        return 2 * fwd if "Backward" in rest else fwd
    return 0.0


def matmul_flops(lowered_hlo: str) -> float:
    """FLOPs of the dots, convolutions and cuDNN attention calls a run of the
    module executes (each called computation counted per call)."""
    comps, entry = _computations(lowered_hlo)
    memo: dict[str, float] = {}

    def total(name: str, depth: int = 0) -> float:
        if name in memo:
            return memo[name]
        parsed = [m.groups() for m in map(_INSTR.match, comps.get(name, ())) if m]
        known = {n: shapes(result) for n, result, _, _ in parsed}
        flops = 0.0
        for _, result, op, rest in parsed:
            flops += _op_flops(op, result, rest, known)
            if op in ("call", "conditional", "while", "async-start") and depth < 64:
                for callee in re.findall(r"(?:to_apply|body|calls|branch_computations)="
                                         r"\{?%?([\w.\-]+)", rest):
                    flops += total(callee, depth + 1) * _shards(callee, rest, comps.get(name, ()))
        memo[name] = flops
        return flops

    return total(entry) if entry else 0.0


def _shards(callee: str, call_rest: str, caller: list[str]) -> int:
    """How many devices run a `shard_map` body (its shapes are one device's
    share): the largest ratio of global to local size among the arrays the
    `xla.sdy.GlobalToLocalShape` feeding the call hands over; 1 for any
    other callee."""
    if not callee.startswith("xla.sdy.manual_computation_body"):
        return 1
    instr = {m[1]: m.groups() for m in map(_INSTR.match, caller) if m}
    todo = _operands(call_rest)
    for name in todo:
        if name not in instr:
            continue
        _, result, op, rest = instr[name]
        if op == "get-tuple-element":
            todo += _operands(rest)[:1]
        elif "xla.sdy.GlobalToLocalShape" in rest:
            local = shapes(result)
            glob = [instr[o][1] for o in _operands(rest) if o in instr]
            ratios = [math.prod(shapes(g)[0][1]) // max(1, math.prod(lo[1]))
                      for g, lo in zip(glob, local) if shapes(g)]
            return max(ratios + [1])
    return 1


def _group_size(rest: str, devices: int) -> int:
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", rest)
    if m:
        return int(m[2])
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", rest)
    if m:
        return len([d for d in m[1].split(",") if d])
    return devices


def collectives(compiled_hlo: str, devices: int) -> dict[str, dict]:
    """{kind: {'count', 'bytes', 'group'}} of the partitioned program, per device.
    `bytes`: the data each op leaves on a device (the reduced array for an
    all-reduce, the gathered one for an all-gather, the input of a
    reduce-scatter); async pairs are counted at their start."""
    out: dict[str, dict] = defaultdict(lambda: {"count": 0, "bytes": 0, "group": 0})
    for line in compiled_hlo.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        _, result, op, rest = m.groups()
        kind = op[:-len("-start")] if op.endswith("-start") else op
        if kind not in COLLECTIVES:
            continue
        res = shapes(result)
        if kind == "reduce-scatter":
            size = sum(nbytes(s) for s in shapes(rest.split("),")[0]))
        elif op.endswith("-start") and kind in ("all-gather", "collective-permute"):
            size = nbytes(max(res, key=nbytes)) if res else 0  # (inputs, outputs, ...)
        else:
            size = sum(nbytes(s) for s in res)
        entry = out[kind]
        entry["count"] += 1
        entry["bytes"] += size
        entry["group"] = max(entry["group"], _group_size(rest, devices))
    return dict(out)


def ring_bytes(kind: str, size: int, group: int) -> float:
    """Bytes one device sends for a ring implementation of the collective."""
    if group <= 1:
        return 0.0
    if kind == "all-reduce":
        return 2.0 * (group - 1) / group * size
    if kind == "collective-permute":
        return float(size)
    return (group - 1) / group * size
