"""Check a file written by tests/native/harness.cpp against the oracles of tests/oracles.py, at the tolerances of
tests/test_host_path.py: preprocess within 1 grey level of torch's antialiased bilinear uint8 kernel, masks equal to
the numpy bilinear / bicubic oracles. With a second file, the two must also be equal byte for byte (the aarch64 run
against the x86 one: scripts/aarch64_check.sh).

    python tests/native/compare.py RUN.bin [REFERENCE.bin]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the oracles
from oracles import resize_bicubic, resize_bilinear, torch_resize_uint8  # noqa: E402

MAGIC = b"CSEGHP01"


class Reader:
    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def take(self, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        array = np.frombuffer(self.data, dtype, count, self.offset).copy()  # writable: torch.from_numpy warns
        self.offset += count * dtype.itemsize
        return array

    def done(self) -> bool:
        return self.offset == len(self.data)


def check(path: str) -> list[str]:
    """Every record of the file against its oracle; returns the failures (empty: all agree)."""
    data = Path(path).read_bytes()
    if data[:8] != MAGIC:
        return [f"{path}: not a harness output (magic {data[:8]!r})"]
    reader, failures, counts = Reader(data[8:]), [], {"preprocess": 0, "bilinear": 0, "bicubic": 0}
    while not reader.done():
        kind = int(reader.take(np.int64, 1)[0])
        if kind == 0:
            height, width, size = reader.take(np.int64, 3)
            rgb = reader.take(np.uint8, height * width * 3).reshape(height, width, 3)
            pixels = reader.take(np.float32, 3 * size * size).reshape(3, size, size)
            grey = np.rint((pixels * 0.5 + 0.5) * 255).astype(np.int16)
            error = int(np.abs(grey - torch_resize_uint8(rgb, int(size))).max())
            counts["preprocess"] += 1
            if error > 1:
                failures.append(f"preprocess {height}x{width} -> {size}: {error} grey levels from torch")
        elif kind == 1:
            bicubic, k, in_h, in_w, count, out_h, out_w = (int(v) for v in reader.take(np.int64, 7))
            logits = reader.take(np.float32, k * in_h * in_w).reshape(k, in_h, in_w)
            select = reader.take(np.int64, count)
            masks = reader.take(np.uint8, count * out_h * out_w).reshape(count, out_h, out_w)
            want = (resize_bicubic if bicubic else resize_bilinear)(logits[select], out_h, out_w) > 0
            method = "bicubic" if bicubic else "bilinear"
            counts[method] += 1
            if not np.array_equal(masks.astype(bool), want):
                failures.append(f"{method} {in_h}x{in_w} -> {out_h}x{out_w}: {(masks.astype(bool) != want).sum()} "
                                "pixels differ from the oracle")  # fmt: skip
        else:
            return failures + [f"{path}: unknown record kind {kind} at byte {reader.offset}"]
    print(f"{path}: {counts['preprocess']} preprocess cases, {counts['bilinear']} bilinear and {counts['bicubic']} "
          f"bicubic mask cases against the oracles: {len(failures)} failures")  # fmt: skip
    return failures


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    failures = check(argv[0])
    if len(argv) == 2:
        run, reference = Path(argv[0]).read_bytes(), Path(argv[1]).read_bytes()
        if run != reference:
            size = min(len(run), len(reference))
            first = next((i for i in range(size) if run[i] != reference[i]), size)
            sizes = f"sizes {len(run)}, {len(reference)}"
            failures.append(f"{argv[0]} and {argv[1]} differ: first at byte {first} ({sizes})")
        else:
            print(f"{argv[0]} equals {argv[1]} byte for byte ({len(run)} bytes)")
    for failure in failures:
        print("FAIL:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
