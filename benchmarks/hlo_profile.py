"""Where a compiled XLA program spends its time: per-op times from a jax.profiler trace,
grouped by kind of op and by the part of the model that emitted it.

`profile(compiled, call, calls)` traces `calls` calls of `call()` (which runs `compiled`),
reads the trace back (`jax.profiler.ProfileData`; on XLA:CPU every thunk is an event
carrying its `hlo_op`), and joins each op with the optimized HLO of `compiled`:

* kind: `conv` (a convolution, fused or not), `dot` (a matmul), `gather/scatter`,
  `reduce` (incl. reduce-window: pooling), `copy/transpose`, `elementwise` (the rest);
* part: from the op's Python stack (HLO metadata): the first `PARTS` entry that a
  fcam_jax file on it matches (a convolution of the decoder is `decoder`, the CRF's
  matmuls are `crf`); `autodiff` where XLA kept no source (backward convolutions);
* flops: convolutions and dots counted from their shapes (2 x MACs, padding included).
"""

import collections
import glob
import os
import re
import shutil
import tempfile
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import jax

# (substring of a source path, part): the first entry any file of the op's stack matches.
PARTS = (("losses/crf.py", "crf"), ("losses/seeds.py", "seeds"), ("losses/elb.py", "size"),
         ("cams/", "cam"), ("models/decoder.py", "decoder"), ("losses/", "losses"),
         ("models/", "encoder"), ("optax/", "optimizer"))
CONTROL = ("while", "conditional", "call")  # their bodies' ops are traced on their own

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\([^=]*?\)|\S+) ([a-z][a-z0-9\-]*)\((.*)$")
_SHAPE = re.compile(r"[a-z]+[0-9]*\[([0-9,]*)\]")


class Op(NamedTuple):
  name: str
  opcode: str
  kind: str
  part: str
  flops: float


def _dims(shape: str) -> List[int]:
  m = _SHAPE.match(shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def _prod(xs) -> int:
  out = 1
  for x in xs:
    out *= x
  return out


def _tables(text: str):
  """file ids, function ids, locations, frames of the HLO text's stack tables."""
  def section(name):
    m = re.search(rf"^{name}\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
    return m.group(1).splitlines() if m else []
  files = {int(l.split()[0]): l.split(None, 1)[1].strip('"') for l in section("FileNames")}
  locs = {}
  for l in section("FileLocations"):
    m = re.match(r"(\d+) \{file_name_id=(\d+)", l)
    if m:
      locs[int(m.group(1))] = int(m.group(2))
  frames = {}
  for l in section("StackFrames"):
    m = re.match(r"(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)", l)
    if m:
      # The text prints parent_frame_id one above the parent's id (0 would be "none").
      frames[int(m.group(1))] = (int(m.group(2)), int(m.group(3)) - 1)
  return files, locs, frames


def _part(frame: Optional[int], tables) -> str:
  """The first PARTS entry any fcam_jax (or optax) file of the op's stack matches;
  `autodiff` for ops XLA left without a source (the transposed convolutions of a
  backward pass)."""
  if frame is None:
    return "autodiff"
  files, locs, frames = tables
  seen, paths = set(), []
  while frame and frame in frames and frame not in seen:
    seen.add(frame)
    loc, parent = frames[frame]
    paths.append(files.get(locs.get(loc), ""))
    frame = parent
  paths = [p for p in paths if "fcam_jax" in p or "optax/" in p]
  for key, part in PARTS:
    if any(key in p for p in paths):
      return part
  return "other"


_KIND = {"convolution": "conv", "dot": "dot", "gather": "gather/scatter",
         "scatter": "gather/scatter", "dynamic-slice": "gather/scatter",
         "dynamic-update-slice": "gather/scatter", "reduce": "reduce", "reduce-window": "reduce",
         "select-and-scatter": "reduce", "sort": "reduce", "copy": "copy/transpose",
         "transpose": "copy/transpose"}
_RANK = ("conv", "dot", "gather/scatter", "reduce", "copy/transpose", "elementwise")


def _frame(rest: str) -> Optional[int]:
  m = re.search(r"stack_frame_id=(\d+)", rest)
  return int(m.group(1)) if m else None


def _flops(opcode: str, shape: str, rest: str, shapes: Dict[str, str]) -> float:
  """2 x multiply-adds of a convolution or dot (operand shapes from `shapes`)."""
  operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
  if opcode == "convolution" and len(operands) > 1:
    labels = re.search(r"dim_labels=\w+_(\w+)->", rest)
    rhs = _dims(shapes.get(operands[1], ""))
    if labels and rhs:
      return 2.0 * _prod(_dims(shape)) * _prod(rhs) / rhs[labels.group(1).index("o")]
  if opcode == "dot" and operands:
    lhs = _dims(shapes.get(operands[0], ""))
    contract = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", rest)
    if lhs and contract:
      k = _prod(lhs[int(i)] for i in contract.group(1).split(",") if i)
      return 2.0 * _prod(_dims(shape)) * k
  return 0.0


def parse(text: str) -> Dict[str, Op]:
  """Every instruction of every computation: name -> Op (a fusion by its content)."""
  tables = _tables(text)
  comps: Dict[str, List[Tuple[str, str, str, str]]] = {}
  current = None
  for line in text.splitlines():
    if line.endswith("{") and not line.startswith(" "):
      m = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+)", line)
      current = m.group(1) if m else None
      comps[current] = []
    elif line.startswith("}"):
      current = None
    elif current is not None:
      m = _INSTR.match(line)
      if m:
        comps[current].append(m.groups())
  shapes = {c: {name: shape for name, shape, _, _ in instrs} for c, instrs in comps.items()}

  def info(comp: str, name: str, shape: str, opcode: str, rest: str):
    """(kind, flops, stack frame) of one instruction; a fusion's from its computation:
    the highest-ranked kind inside, the flops summed, the frame of its conv/dot/root."""
    if opcode != "fusion":
      kind = _KIND.get(opcode, "elementwise")
      return kind, _flops(opcode, shape, rest, shapes[comp]), _frame(rest)
    called = re.search(r"calls=%([\w.\-]+)", rest)
    inner = [info(called.group(1), *i) for i in comps.get(called.group(1), [])] if called else []
    kinds = {k for k, _, _ in inner} | {"elementwise"}
    kind = next(k for k in _RANK if k in kinds)
    frames = [f for k, _, f in inner if k == kind and f is not None] + [_frame(rest)]
    return kind, sum(f for _, f, _ in inner), next((f for f in frames if f is not None), None)

  ops = {}
  for comp, instrs in comps.items():
    for instr in instrs:
      kind, flops, frame = info(comp, *instr)
      ops[instr[0]] = Op(instr[0], instr[2], kind, _part(frame, tables), flops)
  return ops


def trace_op_times(call: Callable[[], None], calls: int, module: str
                   ) -> Tuple[Dict[str, float], float]:
  """(seconds per call of each HLO op of `module`, summed over threads; wall seconds per
  call), from a trace of `calls` calls."""
  directory = tempfile.mkdtemp(prefix="hlo_profile_")
  jax.profiler.start_trace(directory)
  try:
    start = time.perf_counter()
    for _ in range(calls):
      call()
    wall = (time.perf_counter() - start) / calls
  finally:
    jax.profiler.stop_trace()
  path = sorted(glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True))[-1]
  data = jax.profiler.ProfileData.from_file(path)
  times = collections.defaultdict(float)
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if "hlo_op" in stats and str(stats.get("hlo_module", "")) == module:
          times[str(stats["hlo_op"])] += event.duration_ns * 1e-9 / calls
  shutil.rmtree(directory, ignore_errors=True)
  return dict(times), wall


def module_name(text: str) -> str:
  return re.match(r"HloModule ([\w.\-]+)", text).group(1)


def profile(compiled, call: Callable[[], None], calls: int = 1):
  """(rows, summed op seconds, wall seconds) per call, rows = [(kind, part, op seconds,
  flops)], largest first."""
  text = compiled.as_text()
  ops = parse(text)
  times, wall = trace_op_times(call, calls, module_name(text))
  rows = collections.defaultdict(lambda: [0.0, 0.0])
  for name, seconds in times.items():
    op = ops.get(name)
    if op is None or op.opcode in CONTROL:
      continue
    rows[(op.kind, op.part)][0] += seconds
    rows[(op.kind, op.part)][1] += op.flops
  total = sum(v[0] for v in rows.values())
  out = sorted(((k, p, s, f) for (k, p), (s, f) in rows.items()), key=lambda r: -r[2])
  return out, total, wall


def table(rows, total: float, peak_flops: float, wall: float, top: int = 12) -> str:
  """Markdown: op kind, part, share of the summed op time, that share of the traced call's
  `wall` time, GFLOP (convolutions and matmuls) and GFLOP / that time as a fraction of
  `peak_flops`. (Independent ops run side by side on the cores, so op times can sum to
  more than the wall time; the share is what each group takes of the machine.)"""
  lines = ["| op kind | part | share of op time | ~wall s | GFLOP | % of peak |",
           "|---|---|---|---|---|---|"]
  for kind, part, seconds, flops in rows[:top]:
    wall_s = wall * seconds / total
    frac = f"{100 * flops / wall_s / peak_flops:.0f}%" if flops and seconds else "-"
    lines.append(f"| {kind} | {part} | {100 * seconds / total:.1f}% | {wall_s:.3f} | "
                 f"{flops / 1e9:.1f} | {frac} |")
  rest = rows[top:]
  if rest:
    seconds = sum(r[2] for r in rest)
    lines.append(f"| (other {len(rest)}) | | {100 * seconds / total:.1f}% | "
                 f"{wall * seconds / total:.3f} | {sum(r[3] for r in rest) / 1e9:.1f} | |")
  return "\n".join(lines)
