"""The daemon raises its soft open-file limit to the hard one (fs/mount.py:
raise_open_file_limit): every file a PACS holds open through the mount is a backing
descriptor, and systemd's default soft limit is 1024. In a fresh interpreter, whose limit the
test may lower first without touching the test run's own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import resource
    from encfs_pacs.fs.mount import raise_open_file_limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # as low as a strict service
    returned = raise_open_file_limit()
    print(returned, *resource.getrlimit(resource.RLIMIT_NOFILE))
""")


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                          timeout=60)
    returned, soft, hard = (int(x) for x in done.stdout.split())
    assert soft == returned > 256
    assert soft == hard or hard == -1  # -1: RLIM_INFINITY, capped by the kernel's nr_open
