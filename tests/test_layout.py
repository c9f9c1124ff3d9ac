"""The package's import graph: no cycle, layers import downward, no command imports another.

Every `import` statement of every module is read (also those inside functions), so a
cycle cannot hide in a function-local import. The layers are docs/design.md's module
map, lowest first.
"""

import ast
import os

import pytest

from tests.conftest import REPO

PACKAGE = "fcam_jax"

# Lowest first; a module may import its own layer and the ones before it. Modules not
# listed (the package __init__ files) are unconstrained.
LAYERS = [
    ("base", ["errors", "files", "devices", "parallel", "distributed", "writers", "optim"]),
    ("data", ["data.records", "data.images", "data.metadata", "data.synthetic", "data.cub_like",
              "data.sources", "data.pipeline", "data.converters.*"]),
    ("models", ["models.*", "weights.*"]),
    ("maps", ["cams.*", "losses.*", "metrics.*"]),
    ("config", ["config_lib", "cli", "checkpoint", "figures", "inference"]),
    ("steps", ["steps", "evaluation"]),
    ("loop", ["loop"]),
    ("stages", ["stage1", "stage2"]),
    ("orchestrator", ["train", "api"]),
    ("commands", ["main", "predict", "sweep", "report", "evaluate_scoremaps", "data.checks",
                  "data.prepare_cub", "data.convert", "weights.convert"]),
]
COMMANDS = dict(LAYERS)["commands"]


def _modules():
  """{dotted module name (without 'fcam_jax.'): path}."""
  out = {}
  root = os.path.join(REPO, PACKAGE)
  for dirpath, _, files in os.walk(root):
    for name in files:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, name), root)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith("__init__") else rel] = os.path.join(
            dirpath, name)
  return out


def _imports(path, modules):
  """The package modules `path` imports anywhere in its body."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from pkg import x`: the submodule pkg.x if there is one, else pkg (its __init__).
      names = [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      if name == PACKAGE or not name.startswith(PACKAGE + "."):
        continue
      name = name[len(PACKAGE) + 1:]
      while name and name not in modules:  # `from pkg import attribute`: the module
        name = name.rpartition(".")[0]
      if name:
        found.add(name)
  return found


@pytest.fixture(scope="module")
def graph():
  modules = _modules()
  return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def _layer(module):
  for rank, (_, patterns) in enumerate(LAYERS):  # a module named exactly (weights.convert,
    if module in patterns:                         # a command) before a pattern (weights.*)
      return rank
  for rank, (_, patterns) in enumerate(LAYERS):
    for p in patterns:
      if p.endswith(".*") and module.startswith(p[:-1]):
        return rank
  return None


def test_no_import_cycle(graph):
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        cycle = stack[stack.index(n):] + [n]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_every_module_has_a_layer(graph):
  packages = {m for m, p in _modules().items() if p.endswith("__init__.py")}
  unplaced = [m for m in graph if _layer(m) is None and m not in packages]
  assert not unplaced, f"modules missing from LAYERS (and docs/design.md's map): {unplaced}"


def test_layers_import_downward_and_commands_import_no_command(graph):
  wrong = []
  for m, deps in graph.items():
    rank = _layer(m)
    if rank is None:
      continue
    for d in deps:
      d_rank = _layer(d)
      if d_rank is not None and d_rank > rank:
        wrong.append(f"{m} ({LAYERS[rank][0]}) imports {d} ({LAYERS[d_rank][0]})")
      if m in COMMANDS and d in COMMANDS:
        wrong.append(f"command {m} imports command {d}")
  assert not wrong, "\n".join(sorted(wrong))
