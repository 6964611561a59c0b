"""User-facing errors: one clear line that names the problem and the fix."""


class UserError(Exception):
    """A problem with the user's input or environment, not a bug in the package.

    Entry points catch it and print its message on one line, without a traceback
    (set ``LLM_SCRATCH_TRACEBACK=1`` to see one), and exit with status 2.
    """
