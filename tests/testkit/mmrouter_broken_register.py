"""A plugin whose register_providers hook raises."""

import router


@router.hookimpl
def register_providers(register, settings):
    raise RuntimeError("cannot start: on purpose")
