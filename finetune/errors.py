"""Errors that carry a message meant for the user (bad input), as opposed to bugs."""

from typing import NamedTuple, Optional


class UserError(Exception):
    """Bad input: a file, a column, a value or a checkpoint. The message says what was wrong and what is expected;
    ``field`` names the setting or input it is about, when one is (the form shows it next to that input)."""

    def __init__(self, message: str, field: Optional[str] = None):
        self.message, self.field = message, field
        super().__init__(f"{field}: {message}" if field else message)


class Problem(NamedTuple):
    """One invalid setting: the field (or input) and what is wrong with it."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(UserError):
    """One or more invalid settings, all listed at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("Invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))
