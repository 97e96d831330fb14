"""The validators `build-dataset validate` knows, as data: name -> "module:Class".

Adding a validator is adding a line. Modules are imported only when a validator is asked
for, so a listed module that is missing (or broken) fails loudly, naming itself, the first
time anyone runs validation, not silently by dropping the check.
"""

from __future__ import annotations

from importlib import import_module

from adinstruct.builder.errors import ConfigError
from adinstruct.validators.base import Validator

#: In running order: the schema first, so that its findings lead the report.
VALIDATORS: dict[str, str] = {
    "schema": "adinstruct.validators.schema_check:SchemaValidator",
    "integrity": "adinstruct.validators.integrity:IntegrityValidator",
    "conversation": "adinstruct.validators.conversation:ConversationValidator",
    "grounding": "adinstruct.validators.grounding:GroundingValidator",
    "leakage": "adinstruct.validators.leakage:LeakageValidator",
    "zero_shot": "adinstruct.validators.zero_shot:ZeroShotValidator",
    "balance": "adinstruct.validators.balance:BalanceValidator",
}


def list_validators() -> list[str]:
    return list(VALIDATORS)


def validator_class(name: str, registry: dict[str, str] | None = None) -> type[Validator]:
    registry = VALIDATORS if registry is None else registry
    if name not in registry:
        raise ConfigError(f"unknown validator {name!r}; known validators: {', '.join(registry)}")
    target = registry[name]
    module_name, _, class_name = target.partition(":")
    try:
        module = import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"validator {name!r} is registered as {target!r}, but its module {module_name} "
            f"cannot be imported: {error}"
        ) from error
    found = getattr(module, class_name, None)
    if not (isinstance(found, type) and issubclass(found, Validator)):
        raise ImportError(
            f"validator {name!r} is registered as {target!r}, but {module_name} has no "
            f"Validator subclass {class_name!r}"
        )
    if getattr(found, "name", None) != name:
        raise ImportError(f"{target} is registered as {name!r} but names itself {found.name!r}")
    return found


def get_validators(
    names: list[str] | None = None, registry: dict[str, str] | None = None
) -> list[Validator]:
    """Fresh instances of the named validators (all of them for None), in registry order."""
    registry = VALIDATORS if registry is None else registry
    wanted = list(registry) if names is None else list(dict.fromkeys(names))
    for name in wanted:
        if name not in registry:
            raise ConfigError(
                f"unknown validator {name!r}; known validators: {', '.join(registry)}"
            )
    return [validator_class(name, registry)() for name in registry if name in wanted]
