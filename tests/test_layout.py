"""The package's layout as its docstrings describe it: which part may import which, and
no module grown past the size where it has usually picked up a second job."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import scheduler_svc

ROOT = Path(scheduler_svc.__file__).parent
PACKAGES = ("api", "client", "console", "engine", "schedule", "security", "store", "targets")
# What each part of scheduler_svc may import from the rest: a package, or a module at
# the top. Data flows API → store → scheduler → executor → targets → run history.
ALLOWED: dict[str, frozenset[str]] = {
    "config": frozenset(),
    "errors": frozenset(),
    "redact": frozenset(),
    "schedule": frozenset(),
    "models": frozenset({"redact", "schedule"}),
    "logs": frozenset({"config", "redact"}),
    "store": frozenset({"config", "errors", "models", "schedule"}),
    "metrics": frozenset({"models", "store"}),
    # The audit trail: its rows and their diffs, written through the store.
    "audit": frozenset({"models", "redact", "store"}),
    # Traces: decided once at start, then a span hook or nothing (docs/tracing.md).
    "tracing": frozenset({"config", "models"}),
    "targets": frozenset({"config", "errors", "logs", "models", "redact", "tracing"}),
    "security": frozenset({"config", "errors", "logs", "models", "redact", "store"}),
    "engine": frozenset(
        {
            "audit",
            "config",
            "errors",
            "logs",
            "metrics",
            "models",
            "schedule",
            "store",
            "targets",
            "tracing",
        }
    ),
    "api": frozenset(
        {
            "audit",
            "config",
            "errors",
            "logs",
            "metrics",
            "models",
            "redact",
            "schedule",
            "security",
            "store",
            "targets",
        }
    ),
    # The operator console: another face of the API (its write functions and rules),
    # never the engine's insides.
    "console": frozenset(
        {"api", "audit", "config", "errors", "models", "schedule", "security", "store"}
    ),
    # The Python client of the HTTP API, and the `jobs`/`runs` commands over it: they
    # talk to a service elsewhere, so they need its wire types and nothing of its insides.
    "client": frozenset({"errors", "models"}),
    "cli_api": frozenset({"client", "models"}),
    # Jobs files (read, checked, written: pure) and the apply/export commands over them.
    "jobs_file": frozenset({"models", "schedule"}),
    "jobs_as_code": frozenset({"cli_api", "client", "jobs_file", "models"}),
}
# The three that put it all together; only serving imports the application, and only
# the command line imports serving.
ASSEMBLY = {
    "app": frozenset({"server"}),
    "server": frozenset({"cli"}),
    "cli": frozenset({"__main__"}),
}
MAX_LINES = 400


def part_of(module: str) -> str:
    """scheduler_svc.engine.executor → engine; scheduler_svc.logs → logs."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(path: Path) -> set[str]:
    """The scheduler_svc modules (or packages) a file imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "scheduler_svc":
                found |= {f"scheduler_svc.{alias.name}" for alias in node.names}
            elif node.module.startswith("scheduler_svc."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("scheduler_svc.")}
    return found


def test_every_part_is_in_the_import_rules() -> None:
    parts = {part_of(name) for name in modules()} - {"__init__", "__main__"}
    assert parts == set(ALLOWED) | set(ASSEMBLY)


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_a_part_imports_only_what_its_rules_allow(part: str) -> None:
    allowed = ALLOWED[part]
    wrong = {
        f"{name} imports {target}"
        for name, path in modules().items()
        if part_of(name) == part
        for target in imports_of(path)
        if part_of(target) != part and part_of(target) not in allowed
    }
    assert wrong == set()


def test_only_the_command_line_imports_the_application() -> None:
    importers = {
        (part_of(target), part_of(name))
        for name, path in modules().items()
        for target in imports_of(path)
        if part_of(target) in ASSEMBLY and part_of(target) != part_of(name)
    }
    assert importers <= {(assembly, user) for assembly, users in ASSEMBLY.items() for user in users}


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_docstring_names_what_it_may_import(package: str) -> None:
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert docstring is not None
    named = set(re.findall(r"`([a-z_]+)`", docstring))
    assert ALLOWED[package] <= named, ALLOWED[package] - named


def test_no_module_is_past_the_size_of_one_job() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
