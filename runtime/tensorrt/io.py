"""An engine's I/O as the engine itself states it, and bindings whose refusal TensorRT only reports as False.

TensorRT's setters (`set_input_shape`, `set_tensor_address`) return False instead of raising, and a run with a
refused binding fails later as an opaque "could not enqueue": every call here checks its result and raises an
error that names the engine, the tensor, the shape and the range the profile was built for.
"""

from __future__ import annotations

import numpy as np

from cseg.errors import BundleError, ProfileError


def profile_range(engine, name: str, index: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) of input `name` in optimization profile `index`, as the engine was built (not the recipe:
    engines registered with `cseg build --register` may have been built with other ranges)."""
    return tuple(tuple(int(d) for d in shape) for shape in engine.get_tensor_profile_shape(name, index))


def set_input_shape(context, engine, key: str, profile: tuple[int, str], name: str, shape) -> None:
    index, profile_name = profile
    shape = tuple(int(d) for d in shape)
    if not context.set_input_shape(name, shape):
        if -1 in tuple(engine.get_tensor_shape(name)):
            low, _, high = profile_range(engine, name, index)
            allowed = f"{'x'.join(map(str, low))} .. {'x'.join(map(str, high))}"
        else:
            allowed = "x".join(map(str, engine.get_tensor_shape(name)))
        raise ProfileError(f"engine {key}: {name} of shape {'x'.join(map(str, shape))} is outside profile "
                           f"{profile_name}, which takes {allowed}")  # fmt: skip


def set_address(context, key: str, name: str, pointer: int) -> None:
    if not context.set_tensor_address(name, int(pointer)):
        raise ProfileError(f"engine {key}: TensorRT refused the device address of {name} ({int(pointer):#x}): a "
                           "misaligned or null pointer, or a tensor the engine does not have")  # fmt: skip


def io_dtype(trt, engine, key: str, name: str) -> np.dtype:
    """The numpy dtype of an I/O tensor, or BundleError for one numpy cannot hold (bfloat16, fp8, int4 I/O)."""
    dtype = engine.get_tensor_dtype(name)
    try:
        return np.dtype(trt.nptype(dtype))
    except (TypeError, KeyError):  # what trt.nptype raises for a type it cannot map
        raise BundleError(f"engine {key}: {name} is {dtype}, which numpy cannot hold: cseg copies every engine input "
                          "and output through numpy; re-export the bundle with this cseg version") from None  # fmt: skip


def largest_shapes(engine, key: str, contexts: dict, input_names, output_names) -> dict[str, tuple[int, ...]]:
    """Every I/O tensor's largest shape over the engine's profiles (contexts: profile name -> its context, in the
    engine's profile order), sizing the buffers. Read from the engine, not the recipe: engines registered with
    `cseg build --register` may have been built with other maxima, and a buffer sized smaller would be overrun."""
    largest: dict[str, tuple[int, ...]] = {}

    def widen(name, shape):
        largest[name] = tuple(max(a, b) for a, b in zip(largest.get(name, shape), shape))

    for index, (profile, context) in enumerate(contexts.items()):
        for name in sorted(input_names):
            shape = tuple(engine.get_tensor_shape(name))
            if -1 in shape:
                shape = profile_range(engine, name, index)[2]
                set_input_shape(context, engine, key, (index, profile), name, shape)
            widen(name, shape)
        for name in output_names:
            shape = tuple(context.get_tensor_shape(name))
            if -1 in shape:  # with every input shape set, -1 means the size depends on the data (e.g. NonZero)
                raise BundleError(f"engine {key}: output {name} has a data-dependent shape "
                                  f"({'x'.join(map(str, shape))}); cseg binds outputs to buffers sized in advance")  # fmt: skip
            widen(name, shape)
    return largest
