"""One exception type for mistakes a user can fix: the entry scripts print its message and exit 2."""


class UserError(Exception):
    """Bad input or configuration. The message names the problem and the fix."""
