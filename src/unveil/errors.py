"""One error type for everything a user can fix; the CLI prints it as one line."""


class UserError(Exception):
    """Bad input the user can fix: the message names the option and says what to do."""


def require(condition: bool, message: str) -> None:
    """Raise a `UserError` with `message` unless `condition` holds."""
    if not condition:
        raise UserError(message)
