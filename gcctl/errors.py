"""The one exception type for errors a user can cause."""


class GcctlError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix.

    The CLI prints it to stderr and exits with `exit_code`; library callers may catch it.
    Bugs are not wrapped in it and still raise normally.
    """

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))
