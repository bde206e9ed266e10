"""Registration by name, shared by methods and settings."""
from __future__ import annotations


def registrar(table: dict, what: str):
    """A class decorator factory: `@register("name")` sets the class's `name` and enters it in `table`."""
    def register(name: str):
        def deco(cls):
            cls.name = name
            table[name] = cls
            return cls
        deco.__doc__ = f"Make a {what} available by the name {name!r}."
        return deco
    register.__doc__ = f"Class decorator: make a {what} available by its name."
    return register
