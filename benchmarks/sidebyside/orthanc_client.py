"""Runs inside ``unshare --net``: brings loopback up, starts Orthanc, posts every DICOM file of
a folder to /instances over one keep-alive connection, checks the count, stops Orthanc and
prints one JSON line. Standard library only."""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path


def die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_until_up(port: int, orthanc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if orthanc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with status {orthanc.returncode} before serving")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/system")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("Orthanc did not answer within the timeout")


def post_all(port: int, bodies: list[bytes]) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    for body in bodies:
        connection.request("POST", "/instances", body=body,
                           headers={"Content-Type": "application/dicom"})
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200 or json.loads(answer).get("Status") != "Success":
            raise RuntimeError(f"POST /instances answered {response.status}: {answer[:200]!r}")
    return time.perf_counter() - start


def count_instances(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/statistics")
    return int(json.loads(connection.getresponse().read())["CountInstances"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orthanc", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sources", type=Path, required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    bodies = [path.read_bytes() for path in sorted(args.sources.glob("*.dcm"))]
    with open(args.log, "ab") as log:
        orthanc = subprocess.Popen([args.orthanc, args.config], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log, preexec_fn=die_with_parent)
    try:
        wait_until_up(args.port, orthanc)
        seconds = post_all(args.port, bodies)
        stored = count_instances(args.port)
        if stored != args.expect or len(bodies) != args.expect:
            raise RuntimeError(f"Orthanc holds {stored} instances, expected {args.expect}")
    finally:
        if orthanc.poll() is None:
            orthanc.send_signal(signal.SIGTERM)
            try:
                orthanc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                orthanc.kill()
                orthanc.wait()
    print(json.dumps({"instances": len(bodies), "seconds": seconds,
                      "instances_per_s": len(bodies) / seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
