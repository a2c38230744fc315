"""pyproject.toml lists every third-party package the code imports or a config names as a `_target_`.

Hydra's plugins (sweeper, launchers) are found by Hydra itself, not imported: pyproject names them by hand."""

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.conftest import ROOT

# Imported inside ``try: ... except ImportError`` (used when installed): declared in an extra, maybe not installed.
OPTIONAL = {"umap": "umap-learn"}
LOCAL = {p.stem for p in ROOT.iterdir() if (p.is_dir() and not p.name.startswith(".")) or p.suffix == ".py"}


def imported_modules() -> dict[str, str]:
    """Top-level module -> a file importing it, over every Python file of the project."""
    found = {}
    tops = [p for p in ROOT.iterdir() if not p.name.startswith(".") and p.name != "outputs"]  # not .venv, runs
    files = [f for top in tops for f in (top.rglob("*.py") if top.is_dir() else [top] if top.suffix == ".py" else [])]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    for path in (ROOT / "conf").rglob("*.yaml"):
        for target in re.findall(r"_target_:\s*([A-Za-z_][\w.]*)", path.read_text()):
            found.setdefault(target.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [r for extra in project["optional-dependencies"].values() for r in extra]
    requirements += project["dependencies"]
    declared = {re.match(r"[A-Za-z0-9._-]+", r)[0].lower() for r in requirements}
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module, where in imported_modules().items():
        if module in sys.stdlib_module_names or module in LOCAL or module == "__main__":
            continue
        dists = {d.lower() for d in providers.get(module, [])} or ({OPTIONAL[module]} if module in OPTIONAL else set())
        assert dists, f"{module} (imported in {where}) is installed by no distribution"
        if not dists & declared:
            missing[module] = (where, sorted(dists))
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"


# What each package of the project may import from the others (docs/design.md, "Dependency direction").
MAY_IMPORT = {
    "models": set(),
    "data": set(),
    "runs": set(),
    "weights": {"models"},
    "nets": {"models", "data", "weights", "runs"},
    "sweeps": {"runs"},
    "features": {"nets", "models", "data", "runs"},
    "trainer": {"nets", "models", "data", "runs", "sweeps", "weights"},
}


def test_packages_import_only_down_the_design_picture():
    wrong = []
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in MAY_IMPORT and top != package and top not in allowed:
                        wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong  # e.g. features/ never imports trainer/: both build nets through nets/
