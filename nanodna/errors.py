"""The one error policy: every mistake a user can fix is a `UserError`.

A `UserError` carries one line meant for the user. Command lines (`train.py`, `eval.py`,
`python -m nanodna.*`) catch it, print `error: <message>` on stderr and exit 2; anything else is
a bug and keeps its traceback. Subclasses say which layer refused the input: `ConfigError`
(config.py), `DataError` (data/), `EvalTableError` (evaluation tables), `MetricsError`
(metrics), `IllegalCharacterError` (tokenizer). Nothing here imports anything, so every layer
can raise it.
"""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """Bad input, config or usage. `str(e)` is one line for the user (printed as `error: ...`)."""


def fail(error: BaseException | str) -> int:
    """Print `error: <message>` on one line to stderr and return the exit code 2."""
    message = " ".join(str(error).split("\n")).strip()
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR
