"""Steps by name. An asset passes the step function itself; a worker process receives the name ``registered`` gives
it and looks the function up here, so no step is ever chosen from a free string."""
from __future__ import annotations

from typing import Callable

Step = Callable[..., dict]
_STEPS: dict[str, Step] = {}


def step(fn: Step) -> Step:
    """Register ``fn`` under its function name (names are unique across mt_core.steps)."""
    if fn.__name__ in _STEPS and _STEPS[fn.__name__] is not fn:
        raise ValueError(f"two steps named {fn.__name__!r}")
    _STEPS[fn.__name__] = fn
    return fn


def registered(fn: Step) -> str:
    """The name a worker process looks ``fn`` up by; only registered steps cross a process boundary."""
    if _STEPS.get(getattr(fn, "__name__", "")) is not fn:
        raise KeyError(f"{fn!r} is not a registered step (decorate it with mt_core.steps.registry.step)")
    return fn.__name__


def lookup(name: str) -> Step:
    import mt_core.steps  # noqa: F401 - registers every step

    if name not in _STEPS:
        raise KeyError(f"no step named {name!r} (registered: {', '.join(sorted(_STEPS))})")
    return _STEPS[name]
