"""Where a compiled step's memory traffic goes, read from its HLO text.

XLA's TPU cost analysis gives one number, "bytes accessed": every top-level
operation of the compiled program reads its operands and writes its result,
at their tiled sizes (`f32[190,64]{1,0:T(8,128)}` occupies 192 x 128
floats). `traffic` recounts it operation by operation with the same rule and
sorts the operations into categories (attention, matmuls, layer norm, ...),
so the total can be checked against XLA's and each part cut on its own.

The rule counts memory levels alike: an array the compiler prefetched into
VMEM (memory space `S(1)`) is counted when the prefetch (`copy-start`) reads
it from HBM, again for the prefetch's result tuple (source and destination)
and its `copy-done`, and again when its consumer reads it. The second figure
of every category, `hbm_bytes`, counts only arrays that live in HBM (no
memory-space annotation), each prefetch once: the traffic the HBM bandwidth
has to carry.

An operation is sorted by its kind first (collectives, copies and layout
changes; a prefetch goes with the operation that consumes it), then by the
functions of the project that traced it (the compiled HLO keeps the Python
stack of every operation) and its JAX name scope (`jax.named_scope`, e.g.
'layer_norm'), and last by what it computes (a fusion around a dot or
convolution is a matmul).
"""
from __future__ import annotations

import math
import re
from collections import defaultdict

from matpac_jax.planning.hlo_stats import BYTES, COLLECTIVES, _INSTR, _computations, _operands

CATEGORIES = {
    "attention": "attention scores, softmax and their gradients (kernels included)",
    "matmuls": "operands and results of the Linear / convolution matmuls",
    "layer_norm": "layer norms and their gradients",
    "elementwise": "other element-wise fusions: GELU, residual adds, casts, biases",
    "masking": "masking: random order, gathers and scatters of tokens",
    "heads_losses": "heads, targets and losses",
    "optimizer_ema": "gradient norm and clipping, optimizer, EMA and parameter updates",
    "layout": "copies, transposes, reshapes, slices, concatenations (layout changes)",
    "collectives": "all-reduce, all-gather, ... (read and written locally)",
    "other": "anything else",
}
_SHAPE = re.compile(r"\b(" + "|".join(sorted(BYTES, key=len, reverse=True))
                    + r")\[([\d,]*)\](?:\{([\d,]*)(?::([^}]*))?\})?")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "partition-id", "replica-id", "opt-barrier", "while", "conditional", "call"}
_PASS = {"bitcast", "get-tuple-element", "copy-done"}  # no data moved (or counted once)
_LAYOUT = {"copy", "transpose", "reshape", "concatenate", "pad", "slice", "dynamic-slice",
           "dynamic-update-slice", "broadcast", "reverse", "slice-start", "slice-done",
           "copy-start", "copy-done", "bitcast-convert", "iota"}
# Functions of this project that traced an operation -> its category: any
# frame of the stack for the parts that run inside models and losses, the
# innermost frame only for functions that call models (a loss calls the
# encoder, whose operations are not the loss's).
_ANY_FRAME = (
    ("attention", re.compile(r"(^|\.)(dot_product_attention|padded_attention|\w+_attention)$")),
    ("optimizer_ema", re.compile(r"(^|\.)(update|_ema|ema_update|before_update|after_update|"
                                 r"clip_by_global_norm|scale_by_\w+)$")),
    ("masking", re.compile(r"(^|\.)(random_masking|random_mask|_gather|gather_rows|"
                           r"scatter_rows)$")),
    ("heads_losses", re.compile(r"(^|\.)(DinoHead|HypothesisHeads)\.__call__$")),
)
_INNERMOST = (
    ("optimizer_ema", re.compile(r"(^|\.)_?(train_step|loss_and_grads)$")),
    ("heads_losses", re.compile(r"(^|\.)(\w+_loss|l2_normalize|_standardize|extract_labels|"
                                r"LabelPredictor\.__call__|Estimator\.__call__|\w+\.loss)$")),
)
# JAX name scopes (and jitted JAX functions) in an operation's op_name.
_SCOPES = (
    ("attention", re.compile(r"\b(attention|dot_product_attention|flash|splash)\b")),
    ("masking", re.compile(r"\b(take_along_axis|argsort|masking)\b")),
    ("layer_norm", re.compile(r"\blayer_norm\b")),
    ("optimizer_ema", re.compile(r"\b(optimizer|ema)\b")),
)
_ATTENTION_KERNEL = re.compile(r"flash|splash|fmha|attention|mha", re.I)
_LIBRARY_MATMUL = re.compile(r"gemm|matmul|\$conv", re.I)


def array_bytes(dtype: str, dims: str, minor_to_major: str = "", attrs: str = "") -> int:
    """Bytes of one array as laid out: dimensions padded to the layout's tile
    (`T(8,128)`: the two most minor dimensions to multiples of 8 and 128)."""
    d = [int(x) for x in dims.split(",") if x]
    tile = re.search(r"T\(([\d,]+)\)", attrs or "")
    if tile:
        t = [int(x) for x in tile[1].split(",")]
        if not d:
            return BYTES[dtype] * math.prod(t)
        order = ([int(x) for x in minor_to_major.split(",")] if minor_to_major
                 else list(range(len(d)))[::-1])
        for size, dim in zip(t[::-1], order):
            d[dim] = -(-d[dim] // size) * size
    return BYTES[dtype] * math.prod(d)


def _sizes(text: str, hbm_only: bool) -> int:
    return sum(array_bytes(*m) for m in _SHAPE.findall(text)
               if not (hbm_only and m[3] and re.search(r"\bS\([1-9]\d*\)", m[3])))


def _stacks(hlo: str) -> dict[int, tuple[str, ...]]:
    """{stack_frame_id: function names, outermost first} from the module's
    FunctionNames / FileLocations / StackFrames tables."""
    tables: dict[str, dict[int, str]] = defaultdict(dict)
    table = None
    for line in hlo.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            table = line
        elif table and (m := re.match(r"(\d+) (.*)", line)):
            tables[table][int(m[1])] = m[2]
        elif line.strip():
            table = None
    func = {i: s.strip('"') for i, s in tables["FunctionNames"].items()}
    loc = {i: int(m[1]) for i, s in tables["FileLocations"].items()
           if (m := re.search(r"function_name_id=(\d+)", s))}
    frames = {i: (int(m[1]), int(m[2])) for i, s in tables["StackFrames"].items()
              if (m := re.search(r"file_location_id=(\d+) parent_frame_id=(\d+)", s))}
    # XLA prints parent ids one higher than the frame ids (0: none); a frame
    # that names itself as parent shows that convention.
    shift = 1 if any(p == i for i, (_, p) in frames.items()) else 0
    out: dict[int, tuple[str, ...]] = {}

    def names(i: int, depth: int = 0) -> tuple[str, ...]:
        if i in out:
            return out[i]
        if i not in frames or depth > 512:
            return ()
        location, parent = frames[i]
        parent -= shift
        here = func.get(loc.get(location, -1), "")
        out[i] = (names(parent, depth + 1) if 0 < parent != i else ()) + (here,)
        return out[i]

    for i in frames:
        names(i)
    return out


def _by_function(stack: tuple[str, ...]) -> str | None:
    for category, pattern in _ANY_FRAME:
        if any(pattern.search(name) for name in stack):
            return category
    for category, pattern in _INNERMOST:
        if stack and pattern.search(stack[-1]):
            return category
    return None


def _by_scope(op_name: str) -> str | None:
    for category, pattern in _SCOPES:
        if pattern.search(op_name):
            return category
    return None


def traffic(compiled_hlo: str) -> dict:
    """Bytes read and written per step by the compiled module's operations:
    {'bytes', 'hbm_bytes', 'categories': {category: {'bytes', 'hbm_bytes',
    'ops'}}, 'custom_calls': [{'name', 'target', 'bytes'}]} per device; a
    loop body counts as often as it runs, where the HLO says (XLA's cost
    analysis counts it once)."""
    comps, entry = _computations(compiled_hlo)
    stacks = _stacks(compiled_hlo)
    parsed: dict[str, tuple] = {}
    for comp in comps.values():
        for line in comp:
            m = _INSTR.match(line)
            if m:
                parsed[m[1]] = m.groups()
    size = {n: (_sizes(_moved(op, r), False), _sizes(_moved(op, r), True))
            for n, (_, r, op, _) in parsed.items()}
    users: dict[str, list[str]] = defaultdict(list)
    for n, (_, _, _, rest) in parsed.items():
        for o in _operands(rest):
            users[o].append(n)

    def moved_for(name: str) -> str | None:
        """The operation an asynchronous copy moves data for: the first
        consumer past bitcasts and tuple elements, else (a result written
        back to HBM) the producer."""
        seen, todo = set(), [name]
        while todo:
            n = todo.pop(0)
            for u in users.get(n, ()):
                if u in seen:
                    continue
                seen.add(u)
                if parsed[u][2] in _PASS:
                    todo.append(u)
                elif parsed[u][2] != "tuple":
                    return u
        n = name
        while parsed[n][2] in _PASS or parsed[n][2] in ("copy-start", "copy-done"):
            operands = _operands(parsed[n][3])
            if not operands or operands[0] not in parsed:
                return None
            n = operands[0]
        return n if parsed[n][2] not in _FREE else None

    def category(name: str) -> str:
        _, result, op, rest = parsed[name]
        if op in ("copy-start", "copy-done"):  # a prefetch or write-back: what it serves
            target = moved_for(name)
            return category(target) if target else "layout"
        base = op[:-len("-start")] if op.endswith("-start") else op
        base = base[:-len("-done")] if base.endswith("-done") else base
        if base in COLLECTIVES:
            return "collectives"
        if op in _LAYOUT:
            return "layout"
        if op == "custom-call":
            target = re.search(r'custom_call_target="([^"]*)"', rest)
            target = target[1] if target else ""
            if _ATTENTION_KERNEL.search(name) or _ATTENTION_KERNEL.search(target):
                return "attention"
            if _LIBRARY_MATMUL.search(target):  # cuBLAS / cuDNN on GPUs
                return "matmuls"
        op_name = re.search(r'op_name="([^"]*)"', rest)
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        stack = stacks.get(int(frame[1]), ()) if frame else ()
        found = _by_scope(op_name[1]) if op_name else None
        if found in ("attention", "optimizer_ema", "masking"):
            return found
        by_function = _by_function(stack)
        if by_function in ("attention", "optimizer_ema", "masking"):
            return by_function
        if found:
            return found
        if op in ("gather", "scatter", "sort"):
            return "masking"
        if op in ("convolution", "dot") or (op == "fusion" and _calls_matmul(rest, comps)):
            return by_function if by_function == "heads_losses" else "matmuls"
        if by_function:
            return by_function
        if op == "fusion" or op in _ELEMENTWISE or op == "reduce":
            return "elementwise"
        return "other"

    totals = {c: {"bytes": 0, "hbm_bytes": 0, "ops": 0} for c in CATEGORIES}
    custom = []
    for name, times in _reachable(comps, entry):
        _, result, op, rest = parsed[name]
        if op in _FREE or (op == "custom-call" and 'custom_call_target="ConcatBitcast"' in rest):
            continue  # (ConcatBitcast: slices already in VMEM seen as one array)
        done = op.endswith("-done")  # the result only: its operand is the start's tuple
        operands = [] if done else _operands(rest)
        xla = size[name][0] + sum(size.get(o, (0, 0))[0] for o in operands)
        hbm = 0 if done else size[name][1] + sum(size.get(o, (0, 0))[1] for o in operands)
        if op == "copy-start":  # XLA counts the whole (destination, source, flag) tuple
            xla += _sizes(result, False) - size[name][0]
        if op in ("slice", "slice-start", "dynamic-slice") and operands:  # reads its slice
            source_in_hbm = size.get(operands[0], (0, 0))[1] > 0
            xla = 2 * size[name][0]
            hbm = size[name][1] + (size[name][0] if source_in_hbm else 0)
        c = totals[category(name)]
        c["bytes"] += xla * times
        c["hbm_bytes"] += hbm * times
        c["ops"] += 1
        if op == "custom-call":
            target = re.search(r'custom_call_target="([^"]*)"', rest)
            custom.append({"name": name, "target": target[1] if target else "",
                           "bytes": xla * times})
    return {"bytes": sum(c["bytes"] for c in totals.values()),
            "hbm_bytes": sum(c["hbm_bytes"] for c in totals.values()),
            "categories": {k: v for k, v in totals.items() if v["ops"]},
            "custom_calls": custom}


_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "exponential",
                "log", "tanh", "convert", "select", "compare", "negate", "rsqrt", "sqrt",
                "power", "and", "or", "not", "xor", "abs", "sine", "cosine", "erf",
                "is-finite", "clamp", "floor", "ceil", "round-nearest-even", "sign",
                "logistic", "exponential-minus-one", "log-plus-one", "shift-left",
                "shift-right-logical", "shift-right-arithmetic", "reduce-precision"}


def _moved(op: str, result: str) -> str:
    """The array an operation writes: a prefetch's destination (the first of
    its tuple), an asynchronous slice's slice (the second), else its result."""
    if op == "copy-start":
        return _first(result)
    if op == "slice-start":
        shapes = _SHAPE.findall(result)
        return "{}[{}]{{{}:{}}}".format(*shapes[1]) if len(shapes) > 1 else result
    return result


def _first(tuple_text: str) -> str:
    """The first element of a `(a, b, c)` result type (a prefetch's destination)."""
    depth = 0
    for i, ch in enumerate(tuple_text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 1:
            return tuple_text[1:i]
    return tuple_text


def _calls_matmul(rest: str, comps: dict) -> bool:
    m = re.search(r"calls=%?([\w.\-]+)", rest)
    body = comps.get(m[1], ()) if m else ()
    return any(re.search(r"\s(convolution|dot)\(", line) for line in body)


def _reachable(comps: dict, entry: str | None) -> list[tuple[str, int]]:
    """(instruction, times it runs) for what a run executes: the entry's
    instructions, and those of the loops (times their known trip count),
    conditionals and calls it makes, not fusion bodies."""
    out, todo = [], [(entry, 1)] if entry else []
    seen = set()
    while todo:
        name, times = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            m = _INSTR.match(line)
            if not m:
                continue
            out.append((m[1], times))
            if m[3] in ("while", "conditional", "call", "async-start"):
                inner = times * (_trips(m[4], comps) if m[3] == "while" else 1)
                todo += [(c, inner) for c in re.findall(
                    r"(?:body|branch_computations|to_apply|calls)=\{?%?([\w.\-]+)", m[4])]
    return out


def _trips(rest: str, comps: dict) -> int:
    """A loop's trip count: XLA's `known_trip_count`, else the bound its
    condition compares a counter with (`lax.scan`: i < N); 1 if neither."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
    if known:
        return int(known[1])
    cond = re.search(r"condition=%?([\w.\-]+)", rest)
    lines = comps.get(cond[1], ()) if cond else ()
    if any("direction=LT" in line for line in lines):
        bounds = [int(c) for line in lines for c in re.findall(r"s32\[\][^=]*constant\((\d+)\)", line)]
        if len(bounds) == 1:
            return bounds[0]
    return 1


def format_traffic(t: dict, xla_bytes: float | None, samples: int, flops: float) -> list[str]:
    """Report lines: bytes per device per step by category, per sample, and the
    model FLOPs per byte (`flops` and `samples` per device)."""
    gb = lambda b: f"{b / 1e9:8.2f}"
    total = t["bytes"]
    head = (f"memory traffic per device per step: {total / 1e9:.2f} GB counted by operation"
            + (f" (XLA's bytes accessed: {xla_bytes / 1e9:.2f} GB)" if xla_bytes else "")
            + f", {t['hbm_bytes'] / 1e9:.2f} GB of it in HBM; model FLOP per byte "
            + (f"{flops / xla_bytes:.0f} (XLA's count), " if xla_bytes else "")
            + f"{flops / total:.0f} (counted), {flops / t['hbm_bytes']:.0f} (HBM)")
    lines = [head, f"  {'category':<14} {'GB':>8} {'MB/sample':>10} {'share':>6} "
                   f"{'HBM GB':>8}  what"]
    for name, c in sorted(t["categories"].items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"  {name:<14} {gb(c['bytes'])} {c['bytes'] / samples / 1e6:10.1f} "
                     f"{100 * c['bytes'] / total:5.1f}% {gb(c['hbm_bytes'])}  {CATEGORIES[name]}")
    return lines
