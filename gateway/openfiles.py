"""The open-file limit: a node holds a descriptor per connection, and the soft limit a
container or a login shell starts with (1024 under Docker 29 / containerd 2, moby#51485)
is far below the connections it is allowed (``max_connections``, 10,000 by default).
Past it, a new connection is reset before the node sees it: nothing says why."""

from __future__ import annotations

import logging
import resource

__all__ = ["OWN_DESCRIPTORS", "raise_open_file_limit"]

logger = logging.getLogger("socketio_kafka.gateway")

#: Descriptors a node holds besides its clients' connections: its listening socket, its
#: Kafka connections, the event loop's, its log files.
OWN_DESCRIPTORS = 256


def raise_open_file_limit(max_connections: int) -> int:
    """Raise the soft open-file limit to the hard one, as nginx's worker_rlimit_nofile and
    Go's runtime do, and warn when ``max_connections`` cannot all be held under it.

    Returns the soft limit from now on.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + OWN_DESCRIPTORS
    # Linux takes no unlimited soft limit of open files (nr_open caps it): what is needed.
    target = needed if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("the open-file limit stays %d, not %d: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "max_connections %d needs about %d open files but the limit is %d: connections"
            " past about %d are reset; raise the hard limit (ulimit -Hn, compose's ulimits)"
            " or lower max_connections",
            max_connections,
            needed,
            soft,
            max(soft - OWN_DESCRIPTORS, 0),
        )
    return soft
