"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET.

With Type=notify systemd starts units ordered after ours (the PACS) only once we send
READY=1, i.e. once the mount is usable, not merely once the process has started. The
protocol is a newline-separated "KEY=VALUE" text in one AF_UNIX datagram; a socket name
starting with "@" is in the abstract namespace (leading NUL byte).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("encfs_pacs.notify")


def notify(*assignments: str) -> bool:
    """Send e.g. notify("READY=1", "STATUS=serving"). True if sent; False outside systemd.

    Never raises: a lost status message must not take the mount down."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name; not notifying", address)
        return False
    message = "\n".join(assignments).encode("utf-8", errors="replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", address.replace("\0", "@"), exc)
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def stopping(status: str) -> bool:
    return notify("STOPPING=1", f"STATUS={status}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
