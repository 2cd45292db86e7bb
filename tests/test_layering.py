"""The package's layering: a module never imports one of a higher layer.

Every ``.py`` file of the installed packages is parsed with ``ast`` (all imports, those
inside functions included) and each import of one of our modules is checked against
:data:`LAYERS`. Same-layer imports are allowed; ``dsl_jax/__init__.py`` (the public API's
re-exports) is exempt; a module that is not in the table fails the test, so a new
module has to be placed.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Source directory -> the package it is installed as (setup.py's package_dir).
PACKAGES = {"dsl_jax": "dsl_jax", "conversion": "dsl_jax.conversion",
            "launch": "dsl_jax.launch", "benchmarks": "dsl_jax.benchmarks"}
EXEMPT = {"dsl_jax"}  # dsl_jax/__init__.py: the public API, re-exported from every layer

# Lowest first. "pkg.*" is the package and everything in it.
LAYERS = [
    ("dsl_jax.errors", "dsl_jax.storage", "dsl_jax.textfiles", "dsl_jax.reports"),
    ("dsl_jax.config", "dsl_jax.configlib", "dsl_jax.tokenizer", "dsl_jax.tfds_data"),
    ("dsl_jax.sharding",),
    ("dsl_jax.attention", "dsl_jax.model"),
    ("dsl_jax.dsl",),
    ("dsl_jax.checkpoint",),
    ("dsl_jax.losses",),
    ("dsl_jax.train.*", "dsl_jax.sampling.*"),
    ("dsl_jax.evaluation.*",),
    ("dsl_jax.conversion.*", "dsl_jax.launch.*"),
    ("dsl_jax.demo", "dsl_jax.demo_data", "dsl_jax.benchmarks.*"),
    ("dsl_jax.commands.*", "dsl_jax.cli"),
]


def layer_of(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        for name in names:
            if module == name.removesuffix(".*") or (
                    name.endswith(".*") and module.startswith(name[:-1])):
                return i
    return None


def source_modules() -> dict[str, str]:
    """Dotted module name -> file path, for every .py file of the packages."""
    out = {}
    for src, package in PACKAGES.items():
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, src)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, os.path.join(ROOT, src))
            prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for f in filenames:
                if f.endswith(".py"):
                    name = prefix if f == "__init__.py" else f"{prefix}.{f[:-3]}"
                    out[name] = os.path.join(dirpath, f)
    return out


def imported_modules(module: str, path: str, known: set[str]) -> set[str]:
    """Our modules that ``module`` (file ``path``) imports anywhere in its body."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = module.split(".")
                parts = parts[: len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:  # "from pkg import submodule" imports the submodule
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    ours = set()
    for t in targets:
        while t and t not in known:  # "import a.b.c" of a name inside a module: its module
            t = t.rpartition(".")[0]
        if t and t not in EXEMPT:
            ours.add(t)
    return ours


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in source_modules() if m not in EXEMPT and layer_of(m) is None)
    assert not unplaced, f"modules missing from tests/test_layering.py LAYERS: {unplaced}"


def test_lower_layers_never_import_higher_ones():
    modules = source_modules()
    known = set(modules)
    violations = []
    for module, path in sorted(modules.items()):
        if module in EXEMPT:
            continue
        low = layer_of(module)
        for target in sorted(imported_modules(module, path, known)):
            high = layer_of(target)
            if low is not None and high is not None and high > low:
                violations.append(f"{module} imports {target} (layer {high} > {low})")
    assert not violations, "imports of a higher layer:\n" + "\n".join(violations)
