"""The daemon fixes glibc's malloc thresholds (fs/mount.py: keep_request_buffers_mapped), so
1 MiB request buffers are reused instead of being faulted in again on every request.

Each case runs in a fresh interpreter: the settings are process-wide, and a process's malloc
history changes glibc's own (dynamic) thresholds."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# What a 1 MiB write costs in buffers, from four worker threads: mfusepy's copy of the request,
# the plaintext copy, the sealed chunks joined. Prints the page faults of 200 such requests.
REQUESTS = textwrap.dedent("""
    import ctypes, os, resource, sys, threading
    if sys.argv[1] == "tuned":
        from encfs_pacs.fs.mount import keep_request_buffers_mapped
        assert keep_request_buffers_mapped()
    source = ctypes.create_string_buffer(os.urandom(1 << 20), 1 << 20)

    def worker(count):
        for _ in range(count):
            data = ctypes.string_at(source, 1 << 20)
            plain = bytes(memoryview(data))
            sealed = b"".join(plain[i:i + 65536] + bytes(28) for i in range(0, len(plain), 65536))
            del data, plain, sealed

    def requests(count):
        threads = [threading.Thread(target=worker, args=(count,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    requests(5)  # every thread has its arena and its first buffers
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    requests(50)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", REQUESTS, mode], capture_output=True, text=True,
                          check=True, timeout=120)
    return int(done.stdout.strip())


def test_request_buffers_are_reused_instead_of_faulted_in_again() -> None:
    default, tuned = _page_faults("default"), _page_faults("tuned")
    pages_moved = 200 * 3 * (1 << 20) // 4096  # 200 requests x three 1 MiB buffers
    assert default > pages_moved // 4, default  # the control: glibc's defaults fault them in
    assert tuned < pages_moved // 50, tuned  # here: ~0-1 000 (the heap keeps them)
