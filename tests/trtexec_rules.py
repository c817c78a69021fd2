"""trtexec's rules for the shape options of an engine build, as its own parser applies them (TensorRT 10.x
samples/common/sampleOptions.cpp: argsToArgumentsMap, getOptimizationProfiles, BuildOptions::parse), so the
build_engines.sh lines cseg writes can be checked where trtexec cannot run.

Modelled: every `--profile=N` takes the --minShapes/--optShapes/--maxShapes that follow it immediately (each at
most once); profile indices must be unique and leave no gap; without --profile, one set of shape options only
(trtexec: "Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed"); a shape list is
`name:AxBxC,...` (the name ends at the last colon). Not modelled: every other option (they are only collected).
"""

from __future__ import annotations

import shlex

SELECTORS = {"--minShapes": "min", "--optShapes": "opt", "--maxShapes": "max"}


class TrtexecError(ValueError):
    """What trtexec would refuse the command line with."""


def parse(line: str) -> dict:
    """{"options": {name: [values]}, "profiles": [{tensor: {"min", "opt", "max"}}]} of one trtexec command."""
    words = shlex.split(line)
    if not words or words[0] != "trtexec":
        raise TrtexecError(f"not a trtexec command: {line!r}")
    arguments = []  # (position, name, value): trtexec keeps argv positions to find what follows --profile
    for position, word in enumerate(words[1:], start=1):
        name, _, value = word.partition("=")
        arguments.append((position, name, value))
    profiles: dict[int, dict] = {}
    used: set[int] = set()
    for position, name, value in arguments:
        if name != "--profile":
            continue
        index = int(value)
        if index in profiles:
            raise TrtexecError("Optimization profile index cannot be the same.")
        shapes, seen = {}, set()
        for behind in range(position + 1, position + 1 + len(SELECTORS)):
            match = next(((p, n, v) for p, n, v in arguments if p == behind and n in SELECTORS and n not in seen), None)
            if match is None:
                break
            seen.add(match[1])
            used.add(behind)
            _shapes(shapes, SELECTORS[match[1]], match[2])
        profiles[index] = shapes
        used.add(position)
    leftover = [(p, n, v) for p, n, v in arguments if n in SELECTORS and p not in used]
    if profiles:  # trtexec checks the profiles first, then what is left over
        for index in range(max(profiles) + 1):
            if not profiles.get(index):
                raise TrtexecError(f"Found invalid or missing shape spec at profile index {index}.")
        if leftover:
            raise TrtexecError("Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed.")
    else:
        shapes, seen = {}, set()
        for _, name, value in leftover:
            if name in seen:
                raise TrtexecError("Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed.")
            seen.add(name)
            _shapes(shapes, SELECTORS[name], value)
        profiles = {0: shapes} if shapes else {}
    options: dict[str, list[str]] = {}
    for _, name, value in arguments:
        if name not in SELECTORS and name != "--profile":
            options.setdefault(name, []).append(value)
    return {"options": options, "profiles": [profiles[i] for i in sorted(profiles)]}


def _shapes(shapes: dict, which: str, spec: str) -> None:
    for item in spec.split(","):
        name, _, dims = item.rpartition(":")
        if not name:
            raise TrtexecError(f"shape {item!r} has no tensor name (name:AxBxC)")
        try:
            shapes.setdefault(name.replace("'", ""), {})[which] = [int(d) for d in dims.split("x")]
        except ValueError:
            raise TrtexecError(f"conversion failure: failed to parse {item!r}") from None


def parse_script(text: str) -> list[dict]:
    """Every trtexec line of a shell script (build_engines.sh), parsed."""
    return [parse(line) for line in text.splitlines() if line.startswith("trtexec ")]
