"""The base of every error a user can act on.

Each kind of failure has its own exception type, defined beside the code that raises it
(`StaleCacheError` in pipeline/cache, `ParamsError` in pipeline/config, ...); all derive from
`DistilleryError` so the command line prints their message, which says what to do, without a
traceback.
"""


class DistilleryError(Exception):
    """A failure caused by input or state the user can fix; the message names the thing and the fix."""
