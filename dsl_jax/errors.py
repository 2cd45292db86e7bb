"""The one exception type for bad user input.

The CLI catches :class:`UserError` and prints its message as a single line
(``dsl-jax CMD: error: ...``) with exit status 2; any other exception (a storage server
gone, a bug) is printed as one line too (:func:`one_line`), with exit status 1 and a
hint that ``DSL_JAX_DEBUG=1`` shows its traceback; an OSError (no space left, a
read-only file system, not a directory) as ``PATH: reason``, exit status 1.
"""


class UserError(Exception):
    """Bad input from the user: a config, a file, an argument. Message is one line."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``exc`` as one line: its type and the first non-empty line of its message."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
