"""Old spellings of the model constructors that keep working for one release, with a DeprecationWarning."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def positional_deprecated(*names: str) -> Callable[[F], F]:
    """For ``__init__(self, first, *, <names>...)``: a call that still passes `names` positionally (in that
    order, as before they became keyword-only) works, with a DeprecationWarning saying how to write it."""

    def wrap(init: F) -> F:
        @functools.wraps(init)
        def inner(self: Any, first: Any, *args: Any, **kwargs: Any) -> Any:
            if args:
                if len(args) > len(names):
                    raise TypeError(f"{type(self).__name__}() takes at most {len(names) + 1} positional arguments "
                                    f"({len(args) + 1} given); pass {', '.join(names)} by keyword")
                given = dict(zip(names, args))
                twice = sorted(given.keys() & kwargs.keys())
                if twice:
                    raise TypeError(f"{type(self).__name__}() got multiple values for {twice}")
                warnings.warn(f"{type(self).__name__}(...) with {', '.join(given)} passed by position is deprecated: "
                              f"write {', '.join(f'{n}=...' for n in given)} (keyword-only from the next release)",
                              DeprecationWarning, stacklevel=2)
                kwargs.update(given)
            return init(self, first, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
