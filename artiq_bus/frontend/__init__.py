"""The command-line programs.

numpy is imported here, with SIGINT, SIGTERM and SIGHUP blocked.  Its BLAS library
starts threads when it is loaded, and they keep the mask they start with; the kernel
may hand a process's signal to any thread that does not block it, and one taken by a
BLAS thread would leave the main thread asleep in whatever call it was blocked in (a
Ctrl-C not acted on).  So these signals reach the main thread only.
"""

import signal

_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
try:
    import numpy  # noqa: F401
finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, _previous)
