"""A program for allow-list tests: performs file actions given as JSON and reports each result.

The tests copy this script under different names (the allow-list matches the command line of
interpreters), run it with this interpreter, and read back one JSON result per action:
{"ok": true, "data": "<hex>"} or {"errno": 13}. The action "wait" blocks until the test
writes a line to stdin, so two programs can be interleaved step by step.
"""

from __future__ import annotations

import json
import os
import sys


def run(action: dict, handles: dict[str, int]) -> dict:
    op, path = action["op"], action.get("path", "")
    if op == "read":
        with open(path, "rb") as f:
            return {"data": f.read().hex()}
    if op == "write":
        with open(path, "wb") as f:
            f.write(bytes.fromhex(action["data"]))
        return {}
    if op == "append":
        with open(path, "ab") as f:
            f.write(bytes.fromhex(action["data"]))
        return {}
    if op == "create_new":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, bytes.fromhex(action["data"]))
        os.close(fd)
        return {}
    if op == "open":  # keep a handle for later steps
        handles[action["name"]] = os.open(path, os.O_RDONLY)
        return {}
    if op == "pread":
        return {"data": os.pread(handles[action["name"]], action["size"], 0).hex()}
    if op == "close":
        os.close(handles.pop(action["name"]))
        return {}
    if op == "wait":
        sys.stdin.readline()
        return {}
    if op == "list":
        return {"names": sorted(os.listdir(path))}
    if op == "walk":
        return {"files": sorted(os.path.join(d, f) for d, _, fs in os.walk(path, onerror=_raise) for f in fs)}
    if op == "stat":
        return {"size": os.stat(path).st_size}
    if op == "unlink":
        os.unlink(path)
        return {}
    if op == "rename":
        os.rename(path, action["to"])
        return {}
    if op == "truncate":
        os.truncate(path, action.get("size", 0))
        return {}
    if op == "chmod":
        os.chmod(path, action["mode"])
        return {}
    if op == "mkdir":
        os.mkdir(path)
        return {}
    if op == "rmdir":
        os.rmdir(path)
        return {}
    raise ValueError(f"unknown action {op}")


def _raise(error: OSError) -> None:
    raise error


def main() -> None:
    handles: dict[str, int] = {}
    argument = sys.argv[1]
    if argument.startswith("@"):  # long action lists come in a file (argv strings are limited)
        with open(argument[1:], encoding="utf-8") as f:
            argument = f.read()
    for action in json.loads(argument):
        try:
            result = {"ok": True, **run(action, handles)}
        except OSError as exc:
            result = {"ok": False, "errno": exc.errno}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
