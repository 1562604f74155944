"""Running real PACS programs for the end-to-end tests: a private network, Orthanc, DCMTK.

Orthanc and storescp listen on every interface (no bind-address option), so each test module
gets its own network namespace holding only a loopback interface: nothing they open is
reachable from the machine's network, and ports cannot clash with anyone else's. A holder
process (started by ``unshare --net``; it brings loopback up, then sleeps) keeps the namespace
alive; servers and command-line clients join it with ``nsenter --net=/proc/HOLDER/ns/net``
(which execs the program itself, so the file system sees the real executable — what the
allow-list matches).
The test process talks HTTP to Orthanc over a socket created inside the namespace by a
short-lived thread (``setns`` switches only the calling thread; a socket stays in the
namespace it was created in).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ORTHANC = "/usr/sbin/Orthanc"
DCMTK_TOOLS = ("storescu", "storescp", "dcmdump", "findscu")
HELPERS = ("unshare", "nsenter")
CLONE_NEWNET = 0x40000000
MODALITY_AET = "E2EMODALITY"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def missing_pacs_software() -> str | None:
    """Why the end-to-end tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (private network namespaces for Orthanc and storescp)"
    if not os.access(ORTHANC, os.X_OK):
        return f"{ORTHANC} is missing (install the Debian package orthanc)"
    missing = [tool for tool in DCMTK_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing (install the Debian package dcmtk)"
    missing = [tool for tool in HELPERS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing (install util-linux)"
    return None


def tool(name: str) -> str:
    """Absolute, symlink-free path of a program, as the allow-list sees it in /proc/PID/exe."""
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(name)
    return os.path.realpath(found)


# ---------------------------------------------------------------------------- the namespace


_libc = ctypes.CDLL(None, use_errno=True)

# The holder: brings loopback up (what `ip link set lo up` does, without needing iproute2),
# says so, and sleeps until killed.
_HOLDER = """
import fcntl, signal, socket, struct
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))
print("ready", flush=True)
while True:
    signal.pause()
"""


class NetNamespace:
    """A network namespace with loopback up, alive while its holder process runs."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", sys.executable, "-c", _HOLDER],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       stdin=subprocess.DEVNULL)
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()  # 'ready' once lo is up (EOF if unshare failed)
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"could not create a network namespace: {self.holder.stderr.read()}")

    @property
    def path(self) -> str:
        return f"/proc/{self.holder.pid}/ns/net"

    def command(self, *argv: str | os.PathLike[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", *map(str, argv)]

    def run(self, *argv: str | os.PathLike[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)

    def connect(self, port: int, timeout: float = 30) -> socket.socket:
        """A TCP connection to 127.0.0.1:port inside the namespace."""
        result: dict[str, Any] = {}

        def in_namespace() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        error = ctypes.get_errno()
                        raise OSError(error, f"setns: {os.strerror(error)}")
                finally:
                    os.close(fd)
                result["socket"] = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            except BaseException as error:  # handed to the caller's thread
                result["error"] = error

        thread = threading.Thread(target=in_namespace, name="netns-connect")
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["socket"]

    def stop(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait(timeout=30)
        for stream in (self.holder.stdout, self.holder.stderr):
            if stream is not None:
                stream.close()


class _NamespacedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, netns: NetNamespace, port: int, timeout: float) -> None:
        super().__init__("127.0.0.1", port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        self.sock = self._netns.connect(self.port, timeout=self.timeout)


# ---------------------------------------------------------------------------- Orthanc


class HTTPError(AssertionError):
    pass


class Orthanc:
    """One Orthanc server (the Debian binary, unmodified) with storage and index under ``root``.

    ``start``/``stop``/``restart`` may be called any number of times; ``stop`` is safe to call
    when it is not running (fixtures call it in teardown whatever happened).
    """

    def __init__(self, netns: NetNamespace, root: Path, workdir: Path, *, http_port: int = 18042,
                 dicom_port: int = 14242, aet: str = "ENCFSE2E") -> None:
        self.netns, self.root, self.aet = netns, root, aet
        self.http_port, self.dicom_port = http_port, dicom_port
        self.config_path = workdir / "orthanc.json"
        self.log_path = workdir / "orthanc.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.config_path.write_text(json.dumps(self.config(), indent=2))

    def config(self) -> dict[str, Any]:
        return {
            "Name": "encfs-pacs-e2e",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "StorageCompression": False,
            # Otherwise Orthanc answers downloads from RAM and never re-reads the mount.
            "MaximumStorageCacheSize": 0,
            "SyncStorageArea": True,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpCompressionEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "SaveJobs": False,
            # The modality the tests play (storescu, findscu) may store and query.
            "DicomModalities": {"e2e": [MODALITY_AET, "127.0.0.1", 104]},
            "DicomCheckModalityHost": False,
        }

    # -- life cycle

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.running, "Orthanc is already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"==== start {self.starts}\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.netns.command(ORTHANC, self.config_path), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"Orthanc exited with {self.process.returncode} at start:\n"
                                     f"{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.request("GET", "/system", check=False)[0] == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"Orthanc did not answer within {START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM (Orthanc's clean shutdown); SIGKILL only if it hangs. Returns the exit code."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
                raise AssertionError(f"Orthanc ignored SIGTERM for {STOP_TIMEOUT} s:\n"
                                     f"{self.log_tail()}") from None
        return process.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown code runs (the SQLite WAL is left for recovery)."""
        assert self.process is not None and self.running, "Orthanc is not running"
        process, self.process = self.process, None
        process.kill()
        process.wait(timeout=30)

    def restart(self) -> None:
        code = self.stop()
        assert code == 0, f"Orthanc exited with {code}:\n{self.log_tail()}"
        self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def errors(self) -> list[str]:
        """Orthanc's error lines (glog format: 'E' + date)."""
        return [line for line in self.log_text().splitlines() if line[:1] == "E" and line[1:5].isdigit()]

    # -- REST

    def request(self, method: str, path: str, body: bytes | None = None, *, check: bool = True,
                content_type: str = "application/octet-stream", timeout: float = 120) -> tuple[int, bytes]:
        connection = _NamespacedHTTPConnection(self.netns, self.http_port, timeout)
        try:
            headers = {"Content-Type": content_type} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            status, data = response.status, response.read()
        finally:
            connection.close()
        if check and status != 200:
            raise HTTPError(f"{method} {path}: HTTP {status}: {data[:500]!r}")
        return status, data

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path)[1])

    def download(self, path: str) -> bytes:
        return self.request("GET", path)[1]

    def post(self, path: str, body: bytes | dict[str, Any]) -> Any:
        if isinstance(body, dict):
            return json.loads(self.request("POST", path, json.dumps(body).encode(),
                                           content_type="application/json")[1])
        return json.loads(self.request("POST", path, body)[1])

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    def upload(self, path: Path) -> dict[str, Any]:
        """Store one DICOM file through the REST API (what a web uploader or a script does)."""
        answer = self.post("/instances", path.read_bytes())
        assert answer["Status"] == "Success", answer
        return answer

    def attachment_uuid(self, instance_id: str) -> str:
        """Name of the instance's file in the storage area (``storage/ab/cd/<uuid>``)."""
        return self.get(f"/instances/{instance_id}/attachments/dicom/info")["Uuid"]

    def storage_path(self, instance_id: str) -> str:
        """The instance's file, relative to the mount's Orthanc folder."""
        uuid = self.attachment_uuid(instance_id)
        return f"storage/{uuid[:2]}/{uuid[2:4]}/{uuid}"

    # -- DICOM network

    def storescu(self, files: Sequence[Path]) -> None:
        """Send files with DCMTK's storescu (C-STORE), as a modality would."""
        storescu(self.netns, self.aet, self.dicom_port, files)

    def findscu_studies(self, patient_id: str) -> str:
        """C-FIND at study level with DCMTK's findscu; its output lists the matches."""
        result = self.netns.run("findscu", "-S", "-aet", MODALITY_AET, "-aec", self.aet,
                                "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient_id}",
                                "-k", "StudyInstanceUID", "-k", "PatientName",
                                "127.0.0.1", str(self.dicom_port))
        if result.returncode != 0:
            raise AssertionError(f"findscu failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result.stdout + result.stderr


def storescu(netns: NetNamespace, aet: str, port: int, files: Iterable[Path]) -> None:
    result = netns.run("storescu", "-aet", MODALITY_AET, "-aec", aet, "127.0.0.1", str(port),
                       *map(str, files))
    if result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}):\n{result.stdout}{result.stderr}")


class StoreSCP:
    """DCMTK's storescp receiving into ``folder`` (every transfer syntax accepted)."""

    def __init__(self, netns: NetNamespace, folder: Path, log_path: Path, *, port: int = 11113,
                 aet: str = "E2ESTORESCP") -> None:
        self.netns, self.folder, self.port, self.aet, self.log_path = netns, folder, port, aet, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.netns.command("storescp", "-aet", self.aet, "+xa", "-od", self.folder, str(self.port)),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:  # wait until it accepts connections
            if self.process.poll() is not None:
                raise AssertionError(f"storescp exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.netns.connect(self.port, timeout=5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"storescp did not listen within {START_TIMEOUT} s:\n{self.log()}")

    def send(self, files: Iterable[Path]) -> None:
        storescu(self.netns, self.aet, self.port, files)

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
