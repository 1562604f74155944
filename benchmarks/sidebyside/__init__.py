"""Side-by-side benchmark of the raw disk, gocryptfs and encfs-pacs (issue 8).

Run it with ``benchmarks/side_by_side.py`` (``make bench``); see docs/performance.md.
"""
