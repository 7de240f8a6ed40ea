"""One exception type for mistakes a user can fix: the entry scripts print its message and exit 2 (`fail`)."""

import sys


class UserError(Exception):
    """Bad input or configuration. The message names the problem and the fix."""


class TrainingDiverged(UserError, FloatingPointError):
    """A non-finite loss: the run stops at once (exit 2) and keeps its checkpoints, which were all written before it."""


def fail(message: str) -> None:
    """A user error's one line on stderr, and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
