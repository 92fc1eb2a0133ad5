"""Imported first by the worker pool's fork server (``coordinator.run.pool.WARM_PRELOAD``),
before the heavy modules; nothing else imports it.

Lance registers an ``os.register_at_fork`` hook that warns "lance is not fork-safe" before
every fork, whatever the process did. The fork server only imported Lance: it opened no
dataset, so Lance's runtime (its threads) does not exist there yet and each forked worker
starts its own. The warning does not apply to the fork server, and printed on its stderr
(the coordinator's) it would break JSON log output: it is filtered here, in the fork server
only. Arrow and jemalloc, whose import starts threads, install their own at-fork handlers.
"""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message="lance is not fork-safe", category=UserWarning)
