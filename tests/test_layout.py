"""The layout the architecture rests on: the base package `cseg/` imports nothing from the layers above it, and no
source file grows past ~400 lines.

`cseg/` holds what every layer shares (errors, images, the bundle on disk, evaluation, bench reporting). If a base
module imported cseg.runtime, cseg.export, cseg.engines or cseg.calib, the layers would depend on each other both
ways and `import cseg` would pull in onnxruntime or torch. Only the application layer (the CLI) and the lazy public
names of cseg/__init__.py may reach up. The imports are read from the source (ast), those inside functions too: a
deferred import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("cseg.runtime", "cseg.export", "cseg.engines", "cseg.calib")  # the layers above the base package
# the application layer and the package's lazy public names (Runtime, Rule)
ALLOWED = ("cseg/__init__.py", "cseg/cli/")
MAX_LINES = 400
SOURCE_SUFFIXES = (".py", ".cpp", ".cu", ".h")
SOURCE_FOLDERS = ("cseg", "runtime", "export", "calib", "engines", "track", "tests", "benchmarks")
LINE_EXCEPTIONS: set[str] = set()


def module_name(relative: str) -> str:
    """cseg/bundle/schema.py -> cseg.bundle.schema; cseg/eval/datasets/__init__.py -> cseg.eval.datasets."""
    parts = relative[: -len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, wherever it stands (top level, functions, classes,
    conditionals); relative imports are resolved against `module`. `from a import b` yields a.b too, since b may be a
    submodule (`from cseg import runtime`); importlib.import_module / __import__ with a literal name count as well."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def upward_imports(relative: str, source: str) -> list[str]:
    """`relative:line imports name` for each import of an upper layer by a base module (none for allowed ones)."""
    if relative.startswith(ALLOWED):
        return []
    imports = imported_modules(source, module_name(relative), relative.endswith("__init__.py"))
    return [f"{relative}:{line} imports {name}" for line, name in imports
            if any(name == upper or name.startswith(upper + ".") for upper in UPPER)]  # fmt: skip


def test_the_base_package_imports_no_upper_layer():
    problems = []
    for path in sorted((ROOT / "cseg").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        problems += upward_imports(relative, path.read_text(encoding="utf-8"))
    assert not problems, "the base package cseg/ reaches up:\n" + "\n".join(problems)


@pytest.mark.parametrize("source", [
    "import cseg.runtime\n",
    "from cseg.runtime.preprocess import sam3_pixels\n",
    "from cseg import runtime\n",
    "from cseg import images, export\n",
    "def later():\n    from cseg.engines.targets import resolve\n",
    "class A:\n    def f(self):\n        if True:\n            import cseg.calib.collect as collect\n",
    "from ..runtime import native\n",  # in cseg/bundle/x.py: cseg.runtime
    "from .. import export\n",
    "import importlib\nimportlib.import_module('cseg.export.bundle')\n",
])  # fmt: skip
def test_the_check_finds_an_upward_import_wherever_it_stands(source):
    assert upward_imports("cseg/bundle/example.py", source), source


@pytest.mark.parametrize("source", [
    "from cseg.bundle.schema import read_manifest\nimport cseg.errors\n",
    "from . import schema\nfrom .schema import rule_only\n",  # cseg.bundle itself
    "from cseg import images, prompting\n",
    "import runtime_stats\n",  # a name that merely starts like a layer
    "from cseg.runtimes import x\n",
])  # fmt: skip
def test_the_check_leaves_base_imports_alone(source):
    assert not upward_imports("cseg/bundle/example.py", source), source


def test_the_application_layer_may_reach_up():
    assert not upward_imports("cseg/cli/bench.py", "from cseg.runtime import host_path_bench\n")
    assert not upward_imports("cseg/__init__.py", "def __getattr__(name):\n    import cseg.runtime\n")
    assert upward_imports("cseg/client.py", "import cseg.runtime\n")  # "cli" as a prefix of the file name is not cli/


def test_relative_imports_resolve_from_a_package_init():
    # in cseg/eval/__init__.py "." is cseg.eval, ".." is cseg
    assert upward_imports("cseg/eval/__init__.py", "from ..export import reference\n")
    assert not upward_imports("cseg/eval/__init__.py", "from . import metrics\n")


def test_no_source_file_is_longer_than_the_limit():
    long = []
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            relative = path.relative_to(ROOT).as_posix()
            if path.suffix in SOURCE_SUFFIXES and path.is_file() and relative not in LINE_EXCEPTIONS:
                lines = len(path.read_text(encoding="utf-8").splitlines())
                if lines > MAX_LINES:
                    long.append(f"{relative}: {lines} lines")
    assert not long, f"split these by topic (limit {MAX_LINES} lines):\n" + "\n".join(long)


def test_no_two_source_files_share_a_name():
    """One name finds one file (export/graphs/concept_head.py the spec, export/models/concept_head_module.py the
    module): two files with one name make every search, traceback and review ambiguous. The one exception is the
    runtime's backend twins, named by role on purpose: runtime/host/sam3.py and runtime/tensorrt/sam3.py are the same
    step on host arrays and on the device, so one name finds the other."""
    seen: dict[str, list[str]] = {}
    for folder in SOURCE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if path.name != "__init__.py" and not _backend_twin(relative):
                seen.setdefault(path.name, []).append(relative.as_posix())
    shared = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not shared, shared


BACKENDS = ("host", "onnxruntime", "openvino", "tensorrt", "cuda")


def _backend_twin(relative: Path) -> bool:
    return len(relative.parts) == 3 and relative.parts[0] == "runtime" and relative.parts[1] in BACKENDS
