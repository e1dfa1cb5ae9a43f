"""Is requirements.lock complete for what is installed from it? Exit 1 naming what is not.

The lock is installed with `pip install --no-deps` (install.sh): pip never resolves, so it
can never pick a version the lock does not name. The price is that an incomplete lock
installs without complaint; this check is what makes it fail loudly instead:
  1. every requirement of the project (pyproject.toml: dependencies + the `test` extra), and
     every requirement of every locked package that applies here (markers and the extras
     actually asked for), is in the lock with a version its specifier accepts;
  2. every third-party module the project's code imports is provided by a locked package.
Run by install.sh after `pip check`; tests/test_lock.py runs it on a lock with one entry removed.

    python tools/check_lock.py [--lock requirements.lock] [--root .]
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata as md
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# Imported by code that says so and runs without them; not part of the lock on purpose.
OPTIONAL_IMPORTS = {
    "pyinstrument": "benchmarks/trial_overhead.py --profile only (pip install pyinstrument)",
    "torch": "the opt-in GPSampler (pyproject extra `gp`)",
    "scipy": "the opt-in GPSampler (pyproject extra `gp`)",
}
PROJECT_DIRS = ("study", "train_core", "evaluation", "corpus", "demo", "common", "tools", "tests", "benchmarks")
SKIP_PARTS = {".venv", "build", ".git", "__pycache__"}


@dataclass(frozen=True)
class Locked:
    name: str
    version: Version
    marker: Marker | None

    def applies(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def read_lock(path: Path) -> dict[str, list[Locked]]:
    """`name==version [; marker] \\` lines of a pip-compile / uv lock (hash lines skipped)."""
    out: dict[str, list[Locked]] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip(" \\")
        if not line or raw[:1].isspace() or line.startswith("-"):
            continue
        spec, _, marker = line.partition(";")
        name, sep, version = spec.strip().partition("==")
        if not sep:
            raise SystemExit(f"{path}: `{raw.strip()}` is not pinned with ==")
        name = canonicalize_name(name.split("[")[0])
        out.setdefault(name, []).append(Locked(name, Version(version.strip()),
                                               Marker(marker.strip()) if marker.strip() else None))
    return out


def project_requirements(root: Path) -> list[Requirement]:
    meta = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*meta.get("dependencies", []),
                                     *meta.get("optional-dependencies", {}).get("test", [])]]


def _marker_applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in extras | {""})


def closure_problems(lock: dict[str, list[Locked]], roots: list[Requirement]) -> list[str]:
    """Walk the requirement graph from the project's own requirements, as a resolver would,
    but only through what the lock names."""
    problems: list[str] = []
    seen: set[tuple[str, frozenset]] = set()
    queue: list[tuple[Requirement, str, set[str]]] = [(r, "pyproject.toml", set()) for r in roots]
    while queue:
        req, via, parent_extras = queue.pop()
        if not _marker_applies(req, parent_extras):
            continue
        name = canonicalize_name(req.name)
        here = [e for e in lock.get(name, []) if e.applies()]
        if not here:
            problems.append(f"{req.name} is missing from the lock (required by {via}: {req})")
            continue
        if not any(req.specifier.contains(e.version, prereleases=True) for e in here):
            problems.append(f"{req.name}=={here[0].version} in the lock does not satisfy {req} (required by {via})")
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            problems.append(f"{req.name} is in the lock but not installed (run install.sh)")
            continue
        label = f"{name}[{','.join(sorted(req.extras))}]" if req.extras else name
        queue.extend((Requirement(r), label, set(req.extras)) for r in requires)
    return problems


def imported_modules(root: Path) -> dict[str, str]:
    """Top-level third-party modules the project imports → the first file that does."""
    files = [root / "objective.py", *(p for d in PROJECT_DIRS for p in (root / d).rglob("*.py"))]
    local = {p.stem for p in files} | {p.name for d in PROJECT_DIRS for p in (root / d).rglob("*") if p.is_dir()} \
        | set(PROJECT_DIRS) | {"objective"}
    found: dict[str, str] = {}
    for f in files:
        if not f.is_file() or SKIP_PARTS & set(f.relative_to(root).parts):
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, str(f.relative_to(root)))
    return found


def import_problems(lock: dict[str, list[Locked]], root: Path) -> list[str]:
    providers = md.packages_distributions()
    problems = []
    for module, where in sorted(imported_modules(root).items()):
        if module in OPTIONAL_IMPORTS:
            continue
        dists = [canonicalize_name(d) for d in providers.get(module, [])]
        if not dists:
            problems.append(f"{where} imports `{module}`, which no installed package provides: add it to "
                            "pyproject.toml and the lock")
        elif not any(lock.get(d) for d in dists):
            problems.append(f"{where} imports `{module}` (package {dists[0]}), which is missing from the lock")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lock", type=Path, default=Path("requirements.lock"))
    ap.add_argument("--root", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    lock = read_lock(args.lock)
    problems = closure_problems(lock, project_requirements(args.root)) + import_problems(lock, args.root)
    for p in problems:
        print(f"{args.lock}: {p}", file=sys.stderr)
    if problems:
        print(f"{args.lock}: incomplete ({len(problems)} problem(s)); regenerate it: see the header of the lock",
              file=sys.stderr)
        return 1
    print(f"{args.lock}: complete ({sum(len(v) for v in lock.values())} entries; every requirement and import covered)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
