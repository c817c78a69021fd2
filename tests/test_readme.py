"""The README is the user's manual: every `import` it shows in its Python examples must work as written."""

import importlib
import importlib.util
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_imports() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if re.match(r"(from cseg\S* import |import cseg)", line)]


def test_every_import_the_readme_shows_works():
    imports = readme_imports()
    assert imports, "the README's Python examples import nothing from cseg: the extraction is broken"
    for line in imports:
        if line.startswith("import "):
            importlib.import_module(line.split()[1])
            continue
        module, names = re.match(r"from (\S+) import (.+)", line).groups()
        loaded = importlib.import_module(module)
        for name in (n.strip().split(" as ")[0] for n in names.strip("()").split(",")):
            assert hasattr(loaded, name) or importlib.util.find_spec(f"{module}.{name}"), f"README: {line}"
