"""
Fixtures shared by the test modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .postfix import PrivatePostfix


@pytest.fixture
def privatePostfix() -> Iterator[Callable[..., PrivatePostfix]]:
    """
    A factory of started L{PrivatePostfix} instances (its keyword
    arguments are the constructor's, plus C{start=False} to configure the
    instance further before calling its C{start}). At teardown, whatever
    the test's outcome, every instance is stopped and the test fails if a
    process of one is left.
    """
    instances: list[PrivatePostfix] = []

    def make(*args: Any, start: bool = True, **kwargs: Any) -> PrivatePostfix:
        instance = PrivatePostfix(*args, **kwargs)
        instances.append(instance)
        if start:
            instance.start()
        return instance

    yield make
    errors = []
    for instance in reversed(instances):
        try:
            instance.stop()
        except Exception as e:
            errors.append(f"{instance.configDirectory}: {e}")
    assert not errors, "Postfix instances did not stop:\n" + "\n".join(errors)
