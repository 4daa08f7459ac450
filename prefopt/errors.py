"""The one error type users see: a single line, exit status 2."""


class PrefoptError(Exception):
    """A problem with the user's input (file, row, field, option).

    The CLI prints ``prefopt: error: <message>`` on one line and exits with 2.
    Messages name the file, the row (1-based) and the field where there is one.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
