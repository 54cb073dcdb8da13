"""The base of every settings model: invalid input is a `ConfigError`, however it is built.

pydantic raises `ValidationError` from the constructor and from ``model_validate*``; a model
built on `ConfigModel` raises `ConfigError` naming every bad field from all of them, and a
nested one's errors appear under its parent's field (see `streamlab.errors.flatten_errors`).
Light on purpose (pydantic only): `ConsumerConfig` and `Backoff` use it.

Its number types, `Count` and `Number`, are every int and float field of the settings: a
bool is neither, from any source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from streamlab.errors import ConfigError

__all__ = ["ConfigErrors", "ConfigModel", "Count", "Number", "as_config_error"]


def _not_a_bool(value: object) -> object:
    # pydantic's lax int and float take True as 1, so `max_retries: true` passed in Python and
    # YAML while the environment's text "true" is no number: refuse a bool from every source.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r} (a bool is not a number)")
    return value


Count = Annotated[int, BeforeValidator(_not_a_bool)]
"""An int setting (``batch_size``, ``max_retries``, ...): an int, a whole float or a string
holding one (``"3"``, as the environment gives it); never a bool."""

Number = Annotated[float, BeforeValidator(_not_a_bool)]
"""A float setting (``backoff.multiplier``, ``backoff.jitter``): a number or a string holding
one; never a bool."""


def as_config_error(exc: ValidationError, what: str) -> ConfigError:
    """``exc`` as one `ConfigError` about ``what``: the `ConfigError` a model's own
    ``__init__`` raised when that is the whole story, else one naming every field."""
    errors = exc.errors()
    if len(errors) == 1 and not errors[0]["loc"]:
        cause = errors[0].get("ctx", {}).get("error")
        if isinstance(cause, ConfigError):
            return cause
    return ConfigError.from_validation(exc, what)


def _validating(name: str) -> Any:
    """The classmethod ``name`` of the next base in the MRO, with `ConfigError` for
    `ValidationError`."""

    def method(cls: type[BaseModel], *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(super(ConfigErrors, cls), name)(*args, **kwargs)
        except ValidationError as exc:
            raise as_config_error(exc, cls.__name__) from None

    method.__name__ = method.__qualname__ = name
    return classmethod(method)


class ConfigErrors:
    """``model_validate``, ``model_validate_json`` and ``model_validate_strings`` raising
    `ConfigError` instead of `ValidationError` (mix in before the pydantic base class)."""

    if not TYPE_CHECKING:
        # Keep pydantic's typed signatures for type checkers; at run time, a ConfigError.
        model_validate = _validating("model_validate")
        model_validate_json = _validating("model_validate_json")
        model_validate_strings = _validating("model_validate_strings")


class ConfigModel(ConfigErrors, BaseModel):
    """A frozen model rejecting unknown keys, whose invalid input raises `ConfigError`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    if not TYPE_CHECKING:

        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise as_config_error(exc, type(self).__name__) from None
