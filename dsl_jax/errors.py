"""The one exception type for bad user input.

The CLI catches :class:`UserError` and prints its message as a single line
(``dsl-jax: error: ...``) with exit status 2; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a config, a file, an argument. Message is one line."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)
