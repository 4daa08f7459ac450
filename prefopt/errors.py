"""The one error type users see: a single line, exit status 2."""


class PrefoptError(Exception):
    """A problem with the user's input (file, row, field, option).

    The CLI prints ``prefopt: error: <message>`` on one line and exits with 2.
    Messages name the file, the row (1-based) and the field where there is one.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


def first_line(exc: BaseException) -> str:
    """An exception as one short line for an error message: library errors (pyarrow, jinja, YAML) run to many."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
