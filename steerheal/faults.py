"""Named crash points for the crash-safety tests.

`crash_point("round1:heal-step2")` kills the process with SIGKILL when the environment
variable STEERHEAL_CRASH_AT names that point, so a test can stop a run at an exact place
(between writing a file and recording it, inside a transaction, ...) rather than at a
random moment. Unset, it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "STEERHEAL_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
