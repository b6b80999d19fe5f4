"""Command lines print a user's mistake as one line, not a traceback.

`python -m keras_tipsv2.convert`, `python -m keras_tipsv2.visualize` and the
scripts in recipes/ run their `main` through `run`: a bad argument, a bad
or missing file or an unreachable hub (ValueError, OSError) is printed as
`error: ...` and the exit status is 1. Anything else is a bug and keeps its
traceback; so does every error when TIPSV2_TRACEBACK=1 is set.
"""

import os
import sys

USER_ERRORS = (ValueError, OSError)


def run(main, argv=None):
    """Calls `main(argv)`; returns the exit status (0, or 1 after a user error)."""
    try:
        main(argv)
    except USER_ERRORS as e:
        if os.environ.get("TIPSV2_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
