"""The package's shape, read from the source: folders as layers that import only downwards, one MLflow module,
one tag schema.

Reading the imports (with `ast`, function-level ones included) keeps the structure true as the code grows:
a new module goes into the sub-package that says what it is (its layer comes with it); a new sub-package
must be placed in a layer here before it can be imported by anything.
"""

import ast
from pathlib import Path

import pytest

from ablation.tracking import Tag

ROOT = Path(__file__).resolve().parents[1]
# Lowest first, by folder: each sub-package of ablation/ is one unit, whose modules may import each other;
# a unit may import ablation modules of lower layers only.
LAYERS = [
    {"ablation", "ablation.models"},
    {"ablation.core"},
    {"ablation.cli"},  # the command line every command shares, the report's included
    {"ablation.data"},
    {"ablation.analysis"},
    {"ablation.training"},
    {"ablation.tracking"},
    {"ablation.engine"},
    {"ablation.report"},
    COMMANDS := {"ablation.ladder", "ablation.search", "ablation.attribute", "ablation.worker", "ablation.migrate",
                 "ablation.calibration"},
    {"ablation.api"},
]
# The only modules directly in ablation/: the commands (python -m ablation.NAME), the shared command line,
# the Python API and the package itself; everything else sits in the sub-package that says what it is.
TOP_LEVEL = COMMANDS | {"ablation.cli", "ablation.api", "ablation"}
# The package's lazy re-export of the API: `ablation.__getattr__` imports it on first use, never at `import ablation`.
LAZY_EXPORTS = {("ablation", "ablation.api")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layered unit a module belongs to: a sub-package counts as one (ablation.report.gather -> ablation.report)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or module in SUBPACKAGES else module


def layer_of(module: str) -> int:
    unit = unit_of(module)
    for index, members in enumerate(LAYERS):
        if unit in members:
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: place it there")


def imported(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in the file names (relative imports resolved)."""
    tree, here, names = ast.parse(path.read_text()), module_name(path), set()
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)  # `from ablation import tracking`
            names.update(submodules)
            if len(submodules) < len(node.names):
                names.add(base)  # a name defined in the module (or package) itself
    return names


SOURCES = sorted((ROOT / "ablation").rglob("*.py"))
MODULES = {module_name(p): p for p in SOURCES}
SUBPACKAGES = {module_name(p) for p in SOURCES if p.name == "__init__.py" and p.parent != ROOT / "ablation"}


def ablation_imports(path: Path) -> set[str]:
    return {name for name in imported(path) if name in MODULES and name != "ablation"}


def test_the_package_has_its_modules():
    assert {"ablation.core.config", "ablation.tracking", "ablation.engine.units", "ablation.ladder"} <= set(MODULES)
    assert {"ablation.core", "ablation.training", "ablation.analysis", "ablation.engine"} <= SUBPACKAGES


def test_every_module_sits_in_a_subpackage_but_the_commands_and_the_api():
    top_level = {module_name(p) for p in SOURCES if p.parent == ROOT / "ablation"}
    stray = sorted(top_level - TOP_LEVEL)
    assert top_level == TOP_LEVEL, f"only {sorted(TOP_LEVEL)} belong directly in ablation/: move {stray} into a folder"


def test_every_subpackage_is_one_layered_unit():
    units = set().union(*LAYERS)
    nested = sorted(name for name in SUBPACKAGES if name.count(".") > 1)
    assert not nested, f"sub-packages one folder deep only (a unit is ablation.NAME): {nested}"
    assert SUBPACKAGES <= units, f"place {sorted(SUBPACKAGES - units)} in LAYERS"
    stray = sorted(units - SUBPACKAGES - TOP_LEVEL)
    assert not stray, f"LAYERS names what is neither a sub-package nor a top-level module: {stray}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_go_downwards_only(path):
    here = module_name(path)
    upward = sorted(name for name in ablation_imports(path)
                    if unit_of(name) != unit_of(here) and layer_of(name) >= layer_of(here)
                    and (here, name) not in LAZY_EXPORTS)
    assert not upward, f"{here} (layer {layer_of(here)}) imports {upward} from its own layer or above"


def test_no_import_circle():
    graph = {name: ablation_imports(path) - {name} for name, path in MODULES.items()}
    state = {}

    def visit(node, trail):
        if state.get(node) == "open":
            raise AssertionError(f"import circle: {' -> '.join(trail + [node])}")
        if state.get(node) != "done":
            state[node] = "open"
            for other in graph.get(node, ()):
                visit(other, trail + [node])
            state[node] = "done"

    for node in graph:
        visit(node, [])
    assert len(state) == len(graph)


def test_only_tracking_imports_mlflow():
    files = SOURCES + sorted((ROOT / "benchmarks").rglob("*.py"))
    users = sorted(module_name(p) for p in files if any(n.split(".")[0] == "mlflow" for n in imported(p)))
    assert users and {unit_of(user) for user in users} == {"ablation.tracking"}, users


def tag_values() -> set[str]:
    return {value for name, value in vars(Tag).items() if name.isupper() and value.startswith(Tag.PREFIX)}


def test_tag_names_are_spelled_once():
    assert len(tag_values()) > 20  # the schema is there to be checked against
    files = [p for p in SOURCES + sorted((ROOT / "benchmarks").rglob("*.py")) if module_name(p) != "ablation.tracking.tags"]
    spelled = sorted(
        (module_name(p), node.value) for p in files for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in tag_values())
    assert not spelled, f"tag names spelled out instead of tracking.Tag: {spelled}"


SCREEN = 60  # lines: a function longer than a screen is split into named phases


def test_every_function_fits_on_a_screen():
    lengths = sorted(((node.end_lineno - node.lineno + 1, f"{module_name(path)}.{node.name}")
                      for path in SOURCES for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))), reverse=True)
    assert len(lengths) > 100  # the package's functions were read
    assert lengths[0][0] <= SCREEN, f"longer than {SCREEN} lines: {[item for item in lengths if item[0] > SCREEN]}"


MODULE_LINES = 500  # a module one reader holds in mind: one idea, not seven


def test_every_module_holds_one_idea_in_at_most_500_lines():
    lines = sorted(((len(path.read_text().splitlines()), module_name(path)) for path in SOURCES), reverse=True)
    assert len(lines) > 50  # the package's modules were read
    assert lines[0][0] <= MODULE_LINES, f"over {MODULE_LINES} lines: {[item for item in lines if item[0] > MODULE_LINES]}"
