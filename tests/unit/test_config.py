"""Mount config files: one schema drives loading, defaults, validation and the example file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from encfs_pacs import config
from encfs_pacs.errors import ConfigInvalid, UsageError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "encfs-pacs.toml.example"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orthanc.toml"
    path.write_text(text)
    return path


def test_example_file_is_generated_from_the_schema_and_loads() -> None:
    text = EXAMPLE.read_text()
    # To regenerate: python -c 'from encfs_pacs import config; print(config.example_text(), end="")'
    assert text == config.example_text(), "config/encfs-pacs.toml.example is out of date with SCHEMA"
    loaded = config.load(EXAMPLE)
    assert loaded["backing"] == Path("/srv/pacs-encrypted")
    assert loaded.key_source() == ("credential", "encfs-pacs.key")


def test_every_schema_key_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    for key, spec in config.SCHEMA.items():
        assert re.search(rf"^(# )?{key} = ", text, re.M), key
        assert spec.meaning in text
        # The commented-out example value is itself valid for its key.
        value = tomllib.loads(f"v = {spec.example}")["v"]
        config.validate({"backing": "/b", "mountpoint": "/m", key: value}, "x", Path("/"))


def test_defaults_fill_in_missing_keys(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, 'backing = "/srv/enc"\nmountpoint = "/srv/plain"\n'))
    assert loaded["policy"] == Path("/etc/encfs-pacs/policy.toml")
    assert loaded["audit_fail_open"] is False and loaded["learn"] is False
    assert loaded["audit_log"] is None and loaded.key_source() is None


def test_relative_paths_are_relative_to_the_config_folder(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, 'backing = "enc"\nmountpoint = "/srv/plain"\npolicy = "p.toml"\n'))
    assert loaded["backing"] == tmp_path / "enc"
    assert loaded["policy"] == tmp_path / "p.toml"


@pytest.mark.parametrize(("text", "expected"), [
    ('backing = "/b"\nmountpoint = "/m"\nlearnn = true\n', "unknown key 'learnn'"),
    ('backing = "/b"\nmountpoint = "/m"\naudit-fail-open = true\n', "did you mean 'audit_fail_open'"),
    ('backing = "/b"\nmountpoint = "/m"\nlearn = "yes"\n', "'learn' is 'yes' (str); expected true or false"),
    ('backing = "/b"\nmountpoint = 3\n', "key 'mountpoint' is 3 (int); expected a path"),
    ('backing = "/b"\n', "key 'mountpoint' is missing"),
    ('backing = "/b"\nmountpoint = "/m"\ncredential = "../etc/shadow"\n', "key 'credential'"),
    ('backing = "/b"\nmountpoint = "/m"\nsyslog = "loghost:514"\n', "key 'syslog'"),
    ('backing = "/b"\nmountpoint = "/m"\nsyslog = "udp://loghost:99999"\n', "key 'syslog'"),
    ('backing = "/b"\nmountpoint = "/m"\nsyslog = "tcp://loghost"\n', 'expected "udp://HOST:PORT" or "tcp://'),
    ('backing = "/b"\nmountpoint = "/m"\nsyslog_hostname = "two words"\n', "key 'syslog_hostname'"),
    ('backing = "/b"\nmountpoint = "/m"\nkeyfile = "/k"\ncredential = "c"\n', "keyfile, credential are"),
    ('backing = "/b"\nmountpoint = "/m"\nno_policy = true\nlearn = true\n', "'learn' needs a policy"),
    ('backing = "/b"\nmountpoint = "/m"\nno_audit = true\naudit_log = "/a"\n', "'no_audit' cannot"),
    ('backing = "/b"\nmountpoint = [\n', "not valid TOML"),
])
def test_bad_files_name_file_key_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigInvalid) as caught:
        config.load(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)
    assert caught.value.exit_code == 30


def test_missing_file_is_config_invalid(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid, match="does not exist"):
        config.load(tmp_path / "nope.toml")


def test_valid_syslog_targets(tmp_path: Path) -> None:
    for target in ("/dev/log", "udp://10.0.0.5:514", "udp://loghost.example:1514", "tcp://10.0.0.5:514",
                   "tcp://[fd00::5]:6514"):
        loaded = config.load(write(tmp_path, f'backing = "/b"\nmountpoint = "/m"\nsyslog = "{target}"\n'))
        assert loaded["syslog"] == target


def test_command_line_overrides_the_file_and_replaces_its_key_source(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, 'backing = "/b"\nmountpoint = "/m"\ncredential = "k"\n'))
    merged = config.merge(loaded, {"mountpoint": Path("/other"), "passphrase_file": Path("/p"),
                                   "learn": True, "keyfile": None})
    assert merged["mountpoint"] == Path("/other") and merged["backing"] == Path("/b")
    assert merged.key_source() == ("passphrase_file", Path("/p"))
    assert merged["learn"] is True


def test_command_line_only_errors_are_usage_errors() -> None:
    base = config.MountConfig(config.defaults(), "command line")
    with pytest.raises(UsageError, match="'backing' is missing"):
        config.merge(base, {"mountpoint": Path("/m")}, error=UsageError)
    with pytest.raises(UsageError, match="'syslog' is 'bad'; expected \"udp://HOST:PORT\" or"):
        config.merge(base, {"backing": Path("/b"), "mountpoint": Path("/m"), "syslog": "bad"},
                     error=UsageError)
    with pytest.raises(UsageError, match="'syslog_hostname'"):
        config.merge(base, {"backing": Path("/b"), "mountpoint": Path("/m"), "syslog": "tcp://h:514",
                            "syslog_hostname": "a b"}, error=UsageError)


# ---------------------------------------------------------------------------- --flag/--no-flag (issue 6)


def _resolved(args: list[str]) -> config.MountConfig:
    """What `encfs-pacs mount ARGS` would run with (parsed by click, nothing mounted)."""
    from encfs_pacs.cli.volume import mount, resolve_mount_config

    ctx = mount.make_context("mount", list(args))
    return resolve_mount_config(ctx, ctx.params["config_file"])


@pytest.mark.parametrize(("key", "off"), [("no_policy", "--with-policy"), ("no_audit", "--with-audit"),
                                          ("audit_fail_open", "--audit-fail-closed"),
                                          ("learn", "--no-learn"), ("verbose", "--no-verbose")])
def test_a_boolean_set_true_in_the_file_can_be_switched_off_on_the_command_line(
        tmp_path: Path, key: str, off: str) -> None:
    conf = write(tmp_path, f'backing = "/b"\nmountpoint = "/m"\n{key} = true\n')
    assert _resolved(["--config", str(conf)])[key] is True  # the file alone: on
    assert _resolved(["--config", str(conf), off])[key] is False  # the command line wins


@pytest.mark.parametrize(("key", "on"), [("no_policy", "--no-policy"), ("no_audit", "--no-audit"),
                                         ("audit_fail_open", "--audit-fail-open"),
                                         ("learn", "--learn"), ("verbose", "-v")])
def test_a_boolean_false_in_the_file_can_be_switched_on_and_defaults_stay_off(
        tmp_path: Path, key: str, on: str) -> None:
    conf = write(tmp_path, f'backing = "/b"\nmountpoint = "/m"\n{key} = false\n')
    assert _resolved(["--config", str(conf), on])[key] is True
    assert _resolved(["/b", "/m"])[key] is False  # no file, no flag: the schema default


def test_switching_learn_off_makes_a_file_with_no_policy_and_learn_valid(tmp_path: Path) -> None:
    # The file's learn = true clashes with --no-policy; --no-learn on the same line resolves it.
    conf = write(tmp_path, 'backing = "/b"\nmountpoint = "/m"\nlearn = true\n')
    with pytest.raises(ConfigInvalid, match="'learn' needs a policy"):
        _resolved(["--config", str(conf), "--no-policy"])
    resolved = _resolved(["--config", str(conf), "--no-policy", "--no-learn"])
    assert resolved["no_policy"] is True and resolved["learn"] is False
