"""Errors that carry a message meant for the user (bad input), as opposed to bugs."""


class UserError(Exception):
    """Bad input: a file, a column, a value or a checkpoint. The message says what was wrong and what is expected."""


class ConfigError(UserError):
    """One or more invalid settings, all listed at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("Invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))
