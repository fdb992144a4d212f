"""The layers of docs/architecture.md only look down: every import in ldmkit/ (at the top, inside functions, under
``TYPE_CHECKING``, and ``importlib.import_module("ldmkit....")``) goes to the importer's own layer or to a lower one.
Layers of one rank (training, evaluation, compat) do not import each other."""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ldmkit"

# top to bottom; a layer is a set of units: the name after ``ldmkit.`` (a sub-package or a root module), or
# ``ldmkit`` for the package itself (its ``load`` API)
RANKS: list[dict[str, set[str]]] = [
    {"entry": {"ldmkit", "cli", "cli_args", "runner", "hydra_errors", "run_dirs", "configdoc"}},
    {"tasks": {"tasks"}},
    {"training": {"training"}, "evaluation": {"evaluation"}, "compat": {"compat"}},
    {"data": {"data"}},
    {"model dirs": {"modeldir", "speed"}},
    {"models": {"models"}},
    {"diffusion": {"diffusion"}},
    {"low": {"errors", "atomic", "safeload", "images", "console", "devices", "progress"}},
]
LAYER = {unit: (rank, name) for rank, layers in enumerate(RANKS) for name, units in layers.items() for unit in units}

# upward imports that are still there, (importer, imported module): each is a debt to pay, not a permission
KNOWN = {
    ("ldmkit.tasks.ae_choice", "ldmkit.runner"): "conf_dir() (where conf/ is) lives in the runner",
    ("ldmkit.tasks.ae_choice", "ldmkit.cli_args"): "quote_paths() lives with the CLI's argument helpers",
    ("ldmkit.tasks.f_study", "ldmkit.cli_args"): "quote_paths() lives with the CLI's argument helpers",
    ("ldmkit.tasks.f_study", "ldmkit.runner"): "conf_dir() and the runner's error lines",
    ("ldmkit.tasks.f_study", "ldmkit.hydra_errors"): "hydra_error_line() for the jobs it composes",
    ("ldmkit.tasks.import_compvis", "ldmkit.runner"): "conf_dir() (where conf/ is) lives in the runner",
    ("ldmkit.models.conditioners", "ldmkit.data.shapes"): "the built-in dataset's class names",
}


@dataclass(frozen=True)
class Import:
    """One import statement (or ``import_module`` call) of an ldmkit module."""

    importer: str
    path: Path
    line: int
    target: str  # the imported ldmkit module (or package)
    text: str  # the statement as written


def module_name(path: Path) -> str:
    """``ldmkit/data/wds.py`` -> ``ldmkit.data.wds``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of ldmkit (else a name inside one)."""
    path = REPO.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imported_modules(node: ast.AST, importer: str, package: bool) -> list[str]:
    """The ldmkit modules one import statement or ``importlib.import_module`` call imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the importer's package
            parts = importer.split(".")[: len(importer.split(".")) - node.level + package]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        return list(dict.fromkeys(f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names))
    if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
        arg = node.args[0] if node.args else None
        first = arg.values[0] if isinstance(arg, ast.JoinedStr) and arg.values else arg
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return [first.value.rstrip(".")]
    return []


@functools.cache
def imports() -> tuple[Import, ...]:
    """Every import of an ldmkit module by a module under ldmkit/, wherever it is in the file."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        importer = module_name(path)
        for node in ast.walk(ast.parse(source, str(path))):
            for target in imported_modules(node, importer, path.name == "__init__.py"):
                if target == "ldmkit" or target.startswith("ldmkit."):
                    found.append(Import(importer, path, node.lineno, target, ast.get_source_segment(source, node) or ""))
    return tuple(found)


def unit(module: str) -> str:
    """The layer unit of a module: ``ldmkit.models.unet`` -> ``models``, ``ldmkit`` -> ``ldmkit``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward(imp: Import) -> bool:
    """Whether an import leaves its layer for one that is not below it."""
    (rank, layer), (to_rank, to_layer) = LAYER[unit(imp.importer)], LAYER[unit(imp.target)]
    return layer != to_layer and to_rank <= rank


def test_every_module_has_a_layer():
    missing = sorted({module_name(p) for p in PACKAGE.rglob("*.py") if unit(module_name(p)) not in LAYER})
    assert not missing, f"modules in no layer (place them in RANKS here and in docs/architecture.md): {missing}"


def test_layers_only_import_downwards():
    bad = [imp for imp in imports() if upward(imp) and (imp.importer, imp.target) not in KNOWN]
    lines = [f"{imp.path.relative_to(REPO)}:{imp.line}: `{imp.text}`: the {LAYER[unit(imp.importer)][1]} layer may not "
             f"import the {LAYER[unit(imp.target)][1]} layer" for imp in bad]
    assert not lines, "upward imports (see docs/architecture.md):\n  " + "\n  ".join(lines)


def test_known_upward_imports_are_still_there():
    found = {(imp.importer, imp.target) for imp in imports() if upward(imp)}
    stale = sorted(set(KNOWN) - found)
    assert not stale, f"these upward imports are gone: remove them from KNOWN: {stale}"


def test_the_architecture_page_names_every_layer():
    page = (REPO / "docs" / "architecture.md").read_text()
    units = {u for u in LAYER if u != "ldmkit" and is_module(f"ldmkit.{u}")}
    missing = sorted(u for u in units if f"`{u}" not in page)
    assert not missing, f"docs/architecture.md does not place: {missing}"
