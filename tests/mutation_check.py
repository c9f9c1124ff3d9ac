"""Mutation check: does the test suite fail when the method is made wrong?

Not a pytest module (pytest collects test_*.py only). Run from the repository root:

  python tests/mutation_check.py            # every mutation
  python tests/mutation_check.py --list     # the mutations and their test files
  python tests/mutation_check.py -k elb -k crf   # those whose name contains a word

The repository (`git ls-files` plus untracked, not ignored files) is copied to a temporary
directory. Every mutation is first checked to match its file exactly once (else the
script stops: edit MUTATIONS so the list stays honest as the code changes). Then, one
at a time, each mutation is applied to the copy, its test files are run with
`pytest -x -q`, and the copy is restored. A mutation is caught when a test fails; the
first failing test is then run again on the unmutated copy, to confirm it fails because
of the mutation (a test that fails anyway catches nothing). Prints a table and the
runtime; exits 1 if any mutation survives.
"""

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test files per area, in the order they run (-x stops at the first failure: fast and
# targeted files first).
LOSS = ["tests/losses/test_total_loss.py", "tests/losses/test_elb.py",
        "tests/losses/test_seeds.py", "tests/losses/test_seeds_otsu.py",
        "tests/losses/test_crf.py"]
SEEDS = ["tests/losses/test_seeds_otsu.py", "tests/losses/test_total_loss.py",
         "tests/losses/test_seeds.py"]
ELB = ["tests/losses/test_elb.py", "tests/losses/test_total_loss.py"]
CRF = ["tests/losses/test_total_loss.py", "tests/losses/test_crf.py"]
METRICS = ["tests/metrics"]
CAMS = ["tests/cams"]
GOLDEN = ["tests/weights/test_golden.py"]


@dataclasses.dataclass
class Mutation:
  name: str
  path: str                          # relative to the repository root
  edits: Sequence[Tuple[str, str]]   # (snippet, replacement): each snippet exactly once
  tests: Sequence[str]


M = Mutation
MUTATIONS: List[Mutation] = [
    # --- metrics (docs/design.md §9)
    M("box threshold q > level -> q >= level", "fcam_jax/metrics/boxes.py",
      [('np.searchsorted(values, levels, side="right")',
        'np.searchsorted(values, levels, side="left")')], METRICS),
    M("box threshold level int(tau max q) -> round", "fcam_jax/metrics/boxes.py",
      [("levels = np.floor(thresholds * int(q.max()))",
        "levels = np.round(thresholds * int(q.max()))")], METRICS),
    M("thresholds arange in float32", "fcam_jax/metrics/common.py",
      [("np.arange(0, 1, interval, dtype=np.float64)",
        "np.arange(0, 1, interval, dtype=np.float32).astype(np.float64)")], METRICS),
    M("IoU without the inclusive +1", "fcam_jax/metrics/boxes.py",
      [("b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)",
        "b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))"),
       ("b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)",
        "b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))"),
       ("area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)",
        "area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])"),
       ("area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)",
        "area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])")], METRICS),
    M("box x1 not clipped to S - 1", "fcam_jax/metrics/boxes.py",
      [("np.minimum(hi[:, 0] + 1, width - 1)", "hi[:, 0] + 1")], METRICS),
    M("GT boxes rounded, not truncated", "fcam_jax/metrics/boxes.py",
      [("np.trunc(b * float(size) / extent)", "np.round(b * float(size) / extent)")], METRICS),
    M("PxAP bin edges shifted half a step", "fcam_jax/metrics/masks.py",
      [("self.edges = np.concatenate([thresholds, [1.0, 2.0, 3.0]])",
        "self.edges = np.concatenate([thresholds + interval / 2, [1.0, 2.0, 3.0]])")],
      METRICS),
    # (Edges [1, 1.5, 3] instead would be equivalent: scores are checked to be <= 1.)
    M("PxAP edges [1, 2, 3] -> [2, 3, 4]: score 1 in the last tau bin",
      "fcam_jax/metrics/masks.py",
      [("self.edges = np.concatenate([thresholds, [1.0, 2.0, 3.0]])",
        "self.edges = np.concatenate([thresholds, [2.0, 3.0, 4.0]])")], METRICS),
    # --- CAMs (docs/design.md §4)
    M("CAM of class 0, not the label", "fcam_jax/cams/methods.py",
      [("return _weighted(x.a, w.T[x.labels])",
        "return _weighted(x.a, w.T[jnp.zeros_like(x.labels)])")], CAMS),
    M("gradients of the argmax class, not the label", "fcam_jax/cams/methods.py",
      [("onehot = jax.nn.one_hot(labels, logits.shape[-1]",
        "onehot = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1]")], CAMS),
    M("GradCAM sum over space, not mean", "fcam_jax/cams/methods.py",
      [("return jax.nn.relu(_weighted(x.a, jnp.mean(g, axis=(1, 2))))",
        "return jax.nn.relu(_weighted(x.a, jnp.sum(g, axis=(1, 2))))")], CAMS),
    M("normalize without subtracting the min", "fcam_jax/cams/maps.py",
      [("jnp.where(ok, (cams - lo) / jnp.where(ok, span, 1.0), 0.0)",
        "jnp.where(ok, cams / jnp.where(ok, span, 1.0), 0.0)")], CAMS),
    M("normalize by max, not max - min", "fcam_jax/cams/maps.py",
      [("span = jnp.max(cams, axis=(1, 2), keepdims=True) - lo",
        "span = jnp.max(cams, axis=(1, 2), keepdims=True)")], CAMS),
    # --- seeds (docs/design.md §6)
    M("seeds: FOREGROUND/BACKGROUND constants swapped", "fcam_jax/losses/seeds.py",
      [("FOREGROUND = 1\nBACKGROUND = 0", "FOREGROUND = 0\nBACKGROUND = 1")], SEEDS),
    M("seeds: foreground/background labels swapped", "fcam_jax/losses/seeds.py",
      [("seeds = jnp.where(fg & ~bg, FOREGROUND, IGNORE)",
        "seeds = jnp.where(fg & ~bg, BACKGROUND, IGNORE)"),
       ("return jnp.where(bg & ~fg, BACKGROUND, seeds)",
        "return jnp.where(bg & ~fg, FOREGROUND, seeds)")], SEEDS),
    M("seeds: Otsu threshold not clamped to [1, 254]", "fcam_jax/losses/seeds.py",
      [("fg = q > jnp.clip(otsu_threshold(q), 1, 254)", "fg = q > otsu_threshold(q)")], SEEDS),
    M("seeds: erosion skipped", "fcam_jax/losses/seeds.py",
      [("eroded = _erode(fg, erosion)", "eroded = fg")], SEEDS),
    # --- ELB (docs/design.md §6)
    M("ELB switch at -1/t, not -1/t^2", "fcam_jax/losses/elb.py",
      [("switch = -1.0 / (t * t)", "switch = -1.0 / t")], ELB),
    # --- CRF: the custom VJP (the forward code may move; this should not)
    M("CRF gradient -1/B, not -2/B", "fcam_jax/losses/crf.py",
      [("return (-2.0 / ws.shape[0]) * g", "return (-1.0 / ws.shape[0]) * g")], CRF),
    # --- the total stage-2 loss (docs/design.md §6)
    M("seed term: no gradient to the logits", "fcam_jax/losses/__init__.py",
      [("partial_cross_entropy(logits, seeds",
        "partial_cross_entropy(jax.lax.stop_gradient(logits), seeds")], LOSS),
    M("CRF term: no gradient to the probs", "fcam_jax/losses/__init__.py",
      [("dense_crf_loss(probs, images_raw", "dense_crf_loss(jax.lax.stop_gradient(probs), "
        "images_raw")], LOSS),
    M("size term: no gradient to the probs", "fcam_jax/losses/__init__.py",
      [("size_loss(probs, t)", "size_loss(jax.lax.stop_gradient(probs), t)")], LOSS),
    M("seed term: weight ignored", "fcam_jax/losses/__init__.py",
      [('loss += config_fcam.seeds.weight * terms["seeds"]', 'loss += terms["seeds"]')], LOSS),
    M("CRF term: weight ignored", "fcam_jax/losses/__init__.py",
      [('loss += crf.weight * terms["crf"]', 'loss += terms["crf"]')], LOSS),
    M("size term: weight ignored", "fcam_jax/losses/__init__.py",
      [('loss += config_fcam.size.weight * terms["size"]', 'loss += terms["size"]')], LOSS),
    # --- backbones and checkpoint conversion (docs/design.md §2), against the golden files
    M("checkpoint conv kernels: H and W swapped", "fcam_jax/weights/load.py",
      [("return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO",
        "return value.transpose(3, 2, 1, 0)  # OIHW -> HWIO")], GOLDEN),
    M("InceptionV3 BN eps 1e-5, not 1e-3", "fcam_jax/models/inception.py",
      [("BN_EPS = 1e-3", "BN_EPS = 1e-5")], GOLDEN),
    M("ResNet50 bottleneck BN eps 1e-3, not 1e-5", "fcam_jax/models/resnet.py",
      [("bn = functools.partial(common.BatchNorm, train, 1e-5,",
        "bn = functools.partial(common.BatchNorm, train, 1e-3,")], GOLDEN),
    M("VGG16 conv6 without its ReLU", "fcam_jax/models/vgg.py",
      [('out.append(("conv6", lambda x, train: nn.relu(conv6(x))))',
        'out.append(("conv6", lambda x, train: conv6(x)))')], GOLDEN),
]


def repo_files(repo: str) -> List[str]:
  out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       cwd=repo, check=True, capture_output=True).stdout
  return [f for f in out.decode().split("\0") if f and os.path.isfile(os.path.join(repo, f))]


def copy_repo(repo: str, dest: str):
  for f in repo_files(repo):
    os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
    shutil.copy2(os.path.join(repo, f), os.path.join(dest, f))


def check_snippets(root: str, mutations: Sequence[Mutation]) -> List[str]:
  problems = []
  for m in mutations:
    path = os.path.join(root, m.path)
    if not os.path.isfile(path):
      problems.append(f"{m.name}: no file {m.path}")
      continue
    text = open(path, encoding="utf-8").read()
    for old, _ in m.edits:
      n = text.count(old)
      if n != 1:
        problems.append(f"{m.name}: {m.path} has {n} copies of {old!r} (want exactly 1)")
    for t in m.tests:
      if not os.path.exists(os.path.join(root, t.split("::")[0])):
        problems.append(f"{m.name}: no test path {t}")
  return problems


def run_pytest(root: str, python: str, args: Sequence[str], timeout: float):
  env = dict(os.environ, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE="1")
  cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE", *args]
  try:
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return None, "timeout"
  out = proc.stdout + proc.stderr
  if proc.returncode == 0:
    return 0, ""
  failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
  if failed:
    return proc.returncode, failed[0]
  lines = out.strip().splitlines()
  return proc.returncode, lines[-1] if lines else ""


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("-k", action="append", default=[],
                      help="only mutations whose name contains this (repeatable)")
  parser.add_argument("--list", action="store_true", help="list the mutations and exit")
  parser.add_argument("--python", default=sys.executable, help="interpreter to run pytest")
  parser.add_argument("--timeout", type=float, default=900, help="per pytest run, seconds")
  parser.add_argument("--no-confirm", action="store_true",
                      help="skip re-running the catching test on the unmutated copy")
  args = parser.parse_args(argv)
  mutations = [m for m in MUTATIONS if not args.k or any(k in m.name for k in args.k)]
  if args.list:
    for m in mutations:
      print(f"{m.name:48s} {m.path:32s} {' '.join(m.tests)}")
    return 0
  problems = check_snippets(REPO, MUTATIONS)
  if problems:
    print("The mutation list does not match the code:\n  " + "\n  ".join(problems))
    return 2

  start = time.time()
  rows = []
  with tempfile.TemporaryDirectory(prefix="fcam_mutation_") as root:
    copy_repo(REPO, root)
    for i, m in enumerate(mutations):
      path = os.path.join(root, m.path)
      original = open(path, encoding="utf-8").read()
      text = original
      for old, new in m.edits:
        text = text.replace(old, new)
      t0 = time.time()
      try:
        with open(path, "w", encoding="utf-8") as f:
          f.write(text)
        code, by = run_pytest(root, args.python, m.tests, args.timeout)
      finally:
        with open(path, "w", encoding="utf-8") as f:
          f.write(original)
      caught = code != 0
      if caught and code == 5:  # pytest: no tests collected
        caught, by = False, "no tests ran"
      if caught and by not in ("timeout", "") and "::" in by and not args.no_confirm:
        base, _ = run_pytest(root, args.python, [by], args.timeout)
        if base != 0:
          caught, by = False, f"{by} FAILS UNMUTATED TOO"
      rows.append((m.name, m.path, "yes" if caught else "NO", by, time.time() - t0))
      print(f"[{i + 1}/{len(mutations)}] {'caught' if caught else 'SURVIVED'}: {m.name}"
            f" ({time.time() - t0:.0f} s) {by}", flush=True)

  width = max(len(r[0]) for r in rows)
  fwidth = max(len(r[1]) for r in rows)
  print(f"\n{'mutation':{width}s}  {'file':{fwidth}s}  caught  {'time':>5s}  by")
  for name, path, caught, by, dt in rows:
    print(f"{name:{width}s}  {path:{fwidth}s}  {caught:6s}  {dt:4.0f}s  {by}")
  survived = [r[0] for r in rows if r[2] != "yes"]
  print(f"\n{len(rows) - len(survived)}/{len(rows)} mutations caught; "
        f"runtime {time.time() - start:.0f} s")
  if survived:
    print("SURVIVED: " + "; ".join(survived))
  return 1 if survived else 0


if __name__ == "__main__":
  sys.exit(main())
