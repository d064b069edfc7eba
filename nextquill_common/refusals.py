"""A refusal of ours is printed as its message alone, the last thing a user reads.

Under `axolotl train` a refused recipe used to end in a stack trace through fire, Axolotl's
config loader and pydantic: some forty lines that say nothing the message does not, and push it
off the screen. Every refusal's message starts with ``REFUSAL_PREFIX`` (a pydantic error of ours
carries ``SETTING_ERROR`` as its type), so the hook can tell ours from a bug, whose trace stays.
"""

from __future__ import annotations

import sys
from types import TracebackType

REFUSAL_PREFIX = "NextQuill"
SETTING_ERROR = "nextquill_setting"  # the pydantic error type of a refused recipe key


def refusal_message(error: BaseException) -> str | None:
    """The message of one of our refusals, or None for every other exception."""
    if type(error).__name__ == "ValidationError" and hasattr(error, "errors"):
        messages = []
        for problem in error.errors():  # pydantic wraps a validator's ValueError as "Value error, "
            message = str(problem.get("msg", "")).removeprefix("Value error, ")
            key = ".".join(map(str, problem.get("loc", ())))
            if problem.get("type") == SETTING_ERROR:
                message = f"{REFUSAL_PREFIX}: {message}"
            elif key.startswith("nextquill"):  # a wrong type for one of our keys
                message = f"{REFUSAL_PREFIX}: {key}: {message} (got {problem.get('input')!r})"
            if not message.startswith(REFUSAL_PREFIX):
                return None  # a problem of Axolotl's among them: show pydantic's whole report
            messages.append(message)
        return "\n".join(messages) or None
    if isinstance(error, (ValueError, ImportError, OSError)):
        message = str(error)
        return message if message.startswith(REFUSAL_PREFIX) else None
    return None


def _print_refusals(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    message = refusal_message(error)
    if message is None:
        _previous_hook(kind, error, trace)
    else:
        print(message, file=sys.stderr, flush=True)


_previous_hook = sys.excepthook


def install_refusal_hook() -> None:
    """Print our refusals without their stack trace in this process (the exit status stays 1);
    every other exception goes to the hook that was there before."""
    global _previous_hook
    if sys.excepthook is not _print_refusals:
        _previous_hook = sys.excepthook
        sys.excepthook = _print_refusals
