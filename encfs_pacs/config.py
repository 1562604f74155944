"""Mount configuration files: TOML text -> a validated MountConfig, or ConfigInvalid.

One table (``SCHEMA``) names every key with its type, default and meaning. Loading, defaults,
validation, ``encfs-pacs mount --help`` wording and ``config/encfs-pacs.toml.example`` all
come from it (a test checks the example against it), so the file format and its checks
cannot drift apart (borgmatic's approach).

Relative paths in a file are taken relative to the folder of that file, so a config keeps
meaning the same thing whatever folder systemd or an admin starts the mount from.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audit import forward
from .errors import ConfigInvalid, EncfsPacsError
from .policy.loader import DEFAULT_POLICY_PATH

DEFAULT_CONFIG_DIR = Path("/etc/encfs-pacs")
# systemd credential names: no slashes, not "." or ".." (they name a file in $CREDENTIALS_DIRECTORY).
CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,254}$")
# --audit-host: a file name in the volume's metadata folder, so no slash, not "." or "..".
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# The kinds a key can have: what the TOML value must be and how the message names it.
PATH, BOOL, NAME, SYSLOG, HOSTNAME = "path", "bool", "credential name", "syslog target", "host name"
AUDIT_HOST = "audit host name"
KMS = "key service URI"
KEY_SOURCES = ("passphrase_file", "keyfile", "credential", "kms", "recovery_key_file")


@dataclass(frozen=True)
class Key:
    kind: str
    default: Any
    meaning: str
    required: bool = False
    example: str = ""  # value shown in the example file (TOML syntax)


SCHEMA: dict[str, Key] = {
    "backing": Key(PATH, None, "folder holding the encrypted volume (made by 'encfs-pacs init')",
                   required=True, example='"/srv/pacs-encrypted"'),
    "mountpoint": Key(PATH, None, "empty folder where the plaintext view appears (the PACS's storage)",
                      required=True, example='"/var/lib/orthanc/db"'),
    "passphrase_file": Key(PATH, None, "key source: file whose first line is the passphrase (mode 0600)",
                           example='"/root/pacs.pass"'),
    "keyfile": Key(PATH, None, "key source: 32-byte binary keyfile", example='"/root/pacs.key"'),
    "credential": Key(NAME, None, "key source: systemd credential name, read from "
                      "$CREDENTIALS_DIRECTORY/NAME (exactly 32 bytes = keyfile, else passphrase)",
                      example='"encfs-pacs.key"'),
    "kms": Key(KMS, None, "key source: key service holding the volume's key (HSM or KMIP server) with "
               "this host's credentials as files; the volume records the key itself, see "
               "docs/key-services.md",
               example='"pkcs11:?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/encfs-pacs/hsm.pin"'),
    "recovery_key_file": Key(PATH, None, "key source: recovery key file (share lines from "
                             "'encfs-pacs recovery-key create'), for a lost passphrase",
                             example='"/root/recovery.txt"'),
    "policy": Key(PATH, DEFAULT_POLICY_PATH, "allow-list in force (reloaded when it changes, or on SIGHUP)",
                  example=f'"{DEFAULT_POLICY_PATH}"'),
    "no_policy": Key(BOOL, False, "give every process plaintext (testing only)", example="false"),
    "audit_log": Key(PATH, None, "tamper-evident access log (default: "
                     "/var/log/encfs-pacs/<mountpoint>.audit.jsonl)",
                     example='"/var/log/encfs-pacs/orthanc-db.audit.jsonl"'),
    "no_audit": Key(BOOL, False, "keep no audit trail (testing only)", example="false"),
    "audit_fail_open": Key(BOOL, False, "keep serving when the audit log cannot be written "
                           "(default: refuse access)", example="false"),
    "audit_host": Key(AUDIT_HOST, None, "with shared storage: this server's name for its own audit key "
                      "store and anchor in the volume (each mount of one volume needs its own; "
                      "not set: the volume-wide store, for a single mount)", example='"acq-server"'),
    "shared_storage": Key(BOOL, False, "other mounts (other servers) use the same backing folder: "
                          "close-to-open consistency and file locks instead of kernel caching "
                          "(docs/shared-storage.md)", example="false"),
    "learn": Key(BOOL, False, "deny nothing; record what the policy would deny", example="false"),
    "log_file": Key(PATH, None, "daemon log (default: stderr in the foreground, i.e. the journal "
                    "under systemd; syslog in the background)",
                    example='"/var/log/encfs-pacs/orthanc-db.log"'),
    "verbose": Key(BOOL, False, "log debug details", example="false"),
    "syslog": Key(SYSLOG, None, "syslog collector: \"udp://HOST:PORT\" or \"tcp://HOST:PORT\" receives "
                  "every audit record (RFC 5424, MSGID audit) and the daemon log (MSGID log); a local "
                  "socket path (\"/dev/log\") receives the daemon log only", example='"tcp://127.0.0.1:514"'),
    "syslog_hostname": Key(HOSTNAME, None, "HOSTNAME in the messages sent to the syslog collector "
                           "(default: this host's name; used only with a udp:// or tcp:// syslog target)",
                           example='"pacs-acq.hospital.example"'),
}


@dataclass(frozen=True)
class MountConfig:
    """Every key of SCHEMA, with defaults filled in; ``source`` names the file (or "<defaults>")."""

    values: dict[str, Any] = field(default_factory=dict)
    source: str = "<defaults>"

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def key_source(self) -> tuple[str, Any] | None:
        """The one key source given, as (key, value), or None (then: prompt)."""
        given = [(key, self.values[key]) for key in KEY_SOURCES if self.values[key] is not None]
        return given[0] if given else None


def defaults() -> dict[str, Any]:
    return {key: spec.default for key, spec in SCHEMA.items()}


def _expected(spec: Key) -> str:
    return {PATH: "a path (string)", BOOL: "true or false",
            NAME: "a credential name (letters, digits, _ . @ -; no slash)",
            SYSLOG: forward.TARGET_EXPECTED,
            HOSTNAME: "1-255 printable ASCII characters without spaces",
            KMS: 'a "pkcs11:..." or "kmip://..." URI with absolute file paths (docs/key-services.md)',
            AUDIT_HOST: "a host name (letters, digits, _ . -; at most 64, no slash)",
            }[spec.kind]


def _check_value(key: str, value: Any, base: Path, fail: Any) -> Any:
    spec = SCHEMA[key]
    if spec.kind == BOOL:
        if not isinstance(value, bool):
            fail(key, value, _expected(spec))
        return value
    if not isinstance(value, str) or not value or "\0" in value:
        fail(key, value, _expected(spec))
    if spec.kind == PATH:
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    if spec.kind == NAME:
        if not CREDENTIAL_NAME.match(value) or value in (".", ".."):
            fail(key, value, _expected(spec))
        return value
    if spec.kind == AUDIT_HOST:
        if not HOST_NAME.match(value):
            fail(key, value, _expected(spec))
        return value
    if spec.kind == KMS:
        from .keyservice import parse_uri

        try:
            parse_uri(value)
        except EncfsPacsError as exc:
            fail(key, value, f"{_expected(spec)}: {exc}")
        return value
    if spec.kind == HOSTNAME:
        try:
            return forward.check_hostname(value)
        except ValueError:
            fail(key, value, _expected(spec))
    if value.startswith("/"):
        return value
    try:
        forward.parse_target(value)
    except ValueError:
        fail(key, value, _expected(spec))
    return value


def validate(raw: dict[str, Any], source: str, base: Path) -> MountConfig:
    """Check every key of ``raw`` against SCHEMA and fill in defaults."""

    def fail(key: str, value: Any, expected: str) -> None:
        raise ConfigInvalid(f"{source}: key '{key}' is {value!r} ({type(value).__name__}); "
                            f"expected {expected}")

    values = defaults()
    for key, value in raw.items():
        if key not in SCHEMA:
            close = [k for k in SCHEMA if k.replace("_", "") == key.replace("_", "").replace("-", "")]
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigInvalid(f"{source}: unknown key '{key}'{hint}; known keys: {', '.join(SCHEMA)}")
        values[key] = _check_value(key, value, base, fail)
    return check_consistency(MountConfig(values, source))


def check_consistency(config: MountConfig, error: type[EncfsPacsError] = ConfigInvalid) -> MountConfig:
    """Rules across keys; run again after command-line options are merged in (``error`` is
    UsageError when there is no file: a bad command line keeps its usage exit code)."""
    source, values = config.source, config.values
    for key, spec in SCHEMA.items():
        if spec.required and values[key] is None:
            raise error(f"{source}: key '{key}' is missing; expected {spec.meaning}")
    given = [key for key in KEY_SOURCES if values[key] is not None]
    if len(given) > 1:
        raise error(f"{source}: keys {', '.join(given)} are all set; expected at most one "
                            f"key source ({', '.join(KEY_SOURCES)})")
    if values["no_policy"] and values["learn"]:
        raise error(f"{source}: 'learn' needs a policy to compare against; "
                            "expected no_policy = false")
    if values["no_audit"] and (values["audit_log"] or values["audit_fail_open"] or values["learn"]
                               or values["audit_host"]):
        raise error(f"{source}: 'no_audit' cannot be combined with audit_log, "
                            "audit_fail_open, audit_host or learn; expected no_audit = false")
    return config


def load(path: Path) -> MountConfig:
    """Read and validate a mount config file; ConfigInvalid names the file, key and expectation."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigInvalid(f"config file {path} does not exist") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise ConfigInvalid(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigInvalid(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigInvalid(f"{path}: not valid TOML: {exc}") from None
    return validate(raw, str(path), path.absolute().parent)


def merge(config: MountConfig, overrides: dict[str, Any],
          error: type[EncfsPacsError] = ConfigInvalid) -> MountConfig:
    """Command-line options win over the file; a key source given on the command line replaces
    the file's (instead of clashing with it)."""
    def fail(key: str, value: Any, expected: str) -> None:
        raise error(f"{config.source}: option for '{key}' is {value!r}; expected {expected}")

    values = dict(config.values)
    for key, value in overrides.items():
        if value is not None and SCHEMA[key].kind in (NAME, SYSLOG, HOSTNAME, KMS, AUDIT_HOST):
            _check_value(key, value, Path.cwd(), fail)
    if any(overrides.get(key) is not None for key in KEY_SOURCES):
        for key in KEY_SOURCES:
            values[key] = None
    values.update({key: value for key, value in overrides.items() if value is not None})
    return check_consistency(MountConfig(values, config.source), error)


def example_text() -> str:
    """The documented example file, generated from SCHEMA (config/encfs-pacs.toml.example)."""
    lines = [
        "# encfs-pacs mount configuration: one file per mount, e.g. /etc/encfs-pacs/NAME.toml.",
        "# Used by: encfs-pacs mount --config FILE   (systemd: encfs-pacs@NAME.service)",
        "# Command-line options override the values here. Relative paths are relative to the",
        "# folder of this file. Generated from encfs_pacs/config.py SCHEMA; a test keeps it in sync.",
        "# Key sources: give at most one of passphrase_file, keyfile, credential, kms, recovery_key_file",
        "# (none: the passphrase is asked on the terminal).",
        "",
    ]
    for key, spec in SCHEMA.items():
        required = "required" if spec.required else (
            f"default: {spec.default}" if spec.default not in (None,) else "default: not set")
        if isinstance(spec.default, bool):
            required = f"default: {str(spec.default).lower()}"
        lines.append(f"# {spec.meaning} ({required})")
        # Required keys and the usual production choices are active; the rest are commented out.
        active = spec.required or key in ("credential", "policy")
        lines.append(f"{'' if active else '# '}{key} = {spec.example}")
        lines.append("")
    return "\n".join(lines)
