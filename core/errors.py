"""Errors that end a command, split by whose fault they are (ARCHITECTURE.md, "Errors")."""


class UserError(Exception):
    """The user's input is wrong (config, data, paths): exit 2, one clear message, no traceback.

    The message must say what is wrong, where (YAML field, or file and line) and how to fix it.
    """

    exit_code = 2


class ConfigError(UserError):
    """A config value is invalid; `field` is its dotted YAML path (e.g. ``train.learning_rate``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)
