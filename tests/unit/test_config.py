"""Configuration: mode and group parsing, CLI > env > file > default, and error messages."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ugram.config import (
    Config,
    field_names,
    load_config,
    make_config,
    parse_group,
    parse_mode,
)
from ugram.errors import ConfigError

MODE_ALLOWED = ("octal", "symbolic")


# -- parse_mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0660", 0o660),
        ("660", 0o660),
        ("0o660", 0o660),
        ("0O660", 0o660),
        (0o660, 0o660),
        ("rw-rw----", 0o660),
        ("-rw-rw----", 0o660),
        ("srw-rw----", 0o660),
        ("rw-r-----", 0o640),
        ("0600", 0o600),
        ("rwx------", 0o700),
        ("---------", 0),
        ("0", 0),
        (0, 0),
        ("0777", 0o777),
        ("rwxrwxrwx", 0o777),
        (" 0640 ", 0o640),
    ],
)
def test_parse_mode_accepts(value: object, expected: int) -> None:
    assert parse_mode(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "999",
        "0999",
        "1000",
        "0o1000",
        "0x1b6",
        "rw-rw-rw",
        "rw-rw----x",
        "rwxrwxrwz",
        "wr-rw----",
        "drw-rw----",
        "rwsr-x---",
        "u=rw,g=rw",
        "0o",
        -1,
        0o1000,
        1.5,
        None,
        True,
        [0o660],
    ],
)
def test_parse_mode_rejects_naming_field_value_and_forms(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_mode(value)

    message = str(info.value)
    assert message.startswith("invalid value for mode: ")
    assert repr(value) in message
    assert all(word in message for word in MODE_ALLOWED), message


def test_decimal_int_that_looks_octal_gets_a_hint() -> None:
    # 660 as a TOML integer is decimal 660 = 0o1224: almost certainly meant as "0660".
    with pytest.raises(ConfigError, match=r"write it as the string '0660'"):
        parse_mode(660)


@given(st.integers(0, 0o777))
@example(0)
@example(0o777)
@example(0o400)
def test_every_mode_round_trips_through_its_octal_and_symbolic_forms(mode: int) -> None:
    symbolic = stat.filemode(stat.S_IFREG | mode)  # "-rw-rw----"
    forms: list[object] = [
        mode,
        f"{mode:o}",
        f"0{mode:o}",
        f"0o{mode:o}",
        f"{mode:04o}",
        symbolic,
        symbolic[1:],
        stat.filemode(stat.S_IFSOCK | mode),
    ]
    assert [parse_mode(form) for form in forms] == [mode] * len(forms)


@given(st.integers().filter(lambda n: not 0 <= n <= 0o777))
def test_ints_outside_the_permission_bits_are_rejected(mode: int) -> None:
    with pytest.raises(ConfigError, match="invalid value for mode"):
        parse_mode(mode)


@given(st.text(max_size=12))
@example("rw-rw---\n-")
@example("٠٦٦٠")  # Arabic-Indic digits are digits to int(), not to a mode
def test_any_text_is_a_mode_or_a_config_error(text: str) -> None:
    try:
        outcome: int | str = parse_mode(text)
    except ConfigError as exc:
        outcome = str(exc)
    if isinstance(outcome, str):
        assert outcome.startswith("invalid value for mode: ")
    else:
        assert 0 <= outcome <= 0o777


# -- parse_group ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-1, -1),
        ("-1", -1),
        (0, 0),
        ("0", 0),
        (1234, 1234),
        ("1234", 1234),
        ("root", 0),
        ("daemon", grp.getgrnam("daemon").gr_gid),
    ],
)
def test_parse_group_accepts(value: object, expected: int) -> None:
    assert parse_group(value) == expected


def test_parse_group_unknown_name_says_so() -> None:
    with pytest.raises(ConfigError) as info:
        parse_group("ug-no-such-group")

    message = str(info.value)
    assert message.startswith("invalid value for group: 'ug-no-such-group'")
    assert "existing group" in message


@pytest.mark.parametrize("value", [-2, "-2", 2**32 - 1, 2**40, "", "  ", True, None, 1.5, "ro\0ot"])
def test_parse_group_rejects(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^invalid value for group: .*-1 for the process group"):
        parse_group(value)


# -- load_config: precedence and sources ---------------------------------------------------------


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "ugram.toml"
    path.write_text('workers = 3\ncodec = "json"\nmode = "0600"\n')
    return path


def test_file_overrides_defaults(toml: Path) -> None:
    resolved = load_config(env={}, file=toml)

    assert (resolved.config.workers, resolved.config.codec) == (3, "json")
    assert resolved.config.file_mode == 0o600
    assert resolved.config.max_datagram == Config().max_datagram
    assert resolved.sources["workers"] == f"file {toml}"
    assert resolved.sources["max_datagram"] == "default"


def test_env_overrides_file(toml: Path) -> None:
    resolved = load_config(env={"UGRAM_WORKERS": "5"}, file=toml)

    assert resolved.config.workers == 5
    assert resolved.config.codec == "json", "the file still supplies what env does not"
    assert resolved.sources["workers"] == "env UGRAM_WORKERS"
    assert resolved.sources["codec"] == f"file {toml}"


def test_cli_overrides_env_and_file(toml: Path) -> None:
    resolved = load_config(
        cli={"workers": "7", "codec": None}, env={"UGRAM_WORKERS": "5"}, file=toml
    )

    assert resolved.config.workers == 7
    assert resolved.config.codec == "json", "a flag that was not given (None) overrides nothing"
    assert resolved.sources["workers"] == "cli"
    assert resolved.sources["codec"] == f"file {toml}"


def test_sources_name_every_field() -> None:
    resolved = load_config(cli={"socket": "/tmp/x.sock"}, env={"UGRAM_LOG_LEVEL": "debug"})

    assert set(resolved.sources) == set(field_names())
    assert resolved.sources["socket"] == "cli"
    assert resolved.sources["log_level"] == "env UGRAM_LOG_LEVEL"
    others = set(field_names()) - {"socket", "log_level"}
    assert {resolved.sources[name] for name in others} == {"default"}
    assert resolved.config == make_config(socket="/tmp/x.sock", log_level="debug")


def test_ugram_config_variable_names_the_file(toml: Path) -> None:
    resolved = load_config(env={"UGRAM_CONFIG": str(toml)})

    assert resolved.config.workers == 3
    assert resolved.sources["workers"] == f"file {toml}"


def test_explicit_file_beats_ugram_config(toml: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text("workers = 9\n")

    assert load_config(env={"UGRAM_CONFIG": str(toml)}, file=other).config.workers == 9


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("UGRAM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("UGRAM_WORKERS", "4")

    assert load_config().config.workers == 4


def test_file_with_ugram_table_dashed_keys_and_native_types(tmp_path: Path) -> None:
    path = tmp_path / "app.toml"
    path.write_text(
        "[ugram]\nmax-datagram = 1000\nmode = 0o640\ngraceful_timeout = 2.5\ngroup = 'daemon'\n"
    )

    config = load_config(env={}, file=path).config

    assert config.max_datagram == 1000
    assert config.file_mode == 0o640
    assert config.graceful_timeout == 2.5
    assert config.gid == grp.getgrnam("daemon").gr_gid


# -- load_config: errors -------------------------------------------------------------------------


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"cannot read config file {path}: No such file"):
        load_config(env={}, file=path)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"cannot read config file {tmp_path}"):
        load_config(env={}, file=tmp_path)  # a directory: read fails even as root


@pytest.mark.parametrize(
    "content", [b"workers = \n", b"workers = 2\nworkers = 3\n", b"[ugram\n", b"mode = '\xff'\n"]
)
def test_invalid_toml_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)

    with pytest.raises(ConfigError, match=rf"config file {path} is not valid TOML"):
        load_config(env={}, file=path)


def test_unknown_key_in_file_suggests_the_option(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("wokers = 2\n")

    with pytest.raises(ConfigError, match=r"unknown option 'wokers' \(did you mean 'workers'\?\)"):
        load_config(env={}, file=path)


def test_unrelated_unknown_key_in_file_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.toml"
    path.write_text("colour = 'red'\n")

    with pytest.raises(ConfigError, match=r"^unknown option 'colour'$"):
        load_config(env={}, file=path)


def test_bad_value_in_file_names_field_and_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("workers = 0\n")

    with pytest.raises(ConfigError, match=r"^invalid value for workers: 0 \(allowed: .*1024"):
        load_config(env={}, file=path)


def test_env_near_miss_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"UGRAM_WOKERS": "2"})

    assert "UGRAM_WOKERS" in str(info.value)
    assert "did you mean 'workers'" in str(info.value)


def test_unrelated_ugram_variable_is_left_to_the_application() -> None:
    resolved = load_config(env={"UGRAM_MY_APP_THING": "x", "UGRAM_WORKERS": "2"})

    assert resolved.config.workers == 2
    assert all(source != "env UGRAM_MY_APP_THING" for source in resolved.sources.values())


def test_bad_env_value_names_field_and_value() -> None:
    with pytest.raises(ConfigError, match=r"^invalid value for workers: 'zero' \(allowed"):
        load_config(env={"UGRAM_WORKERS": "zero"})


# -- cross-field checks --------------------------------------------------------------------------


def test_ring_size_too_small_for_max_datagram() -> None:
    with pytest.raises(ConfigError) as info:
        make_config(max_datagram=65536, ring_size=131072)

    message = str(info.value)
    assert message.startswith("invalid value for ring_size: 131072")
    assert "131360" in message, "says how large it must be"
    assert "max_datagram=65536" in message


def test_ring_size_just_large_enough() -> None:
    assert make_config(max_datagram=65536, ring_size=131360).ring_size == 131360


def test_default_ring_size_refuses_the_largest_datagrams() -> None:
    with pytest.raises(ConfigError, match="invalid value for ring_size"):
        make_config(max_datagram=16 * 1024 * 1024)


def test_route_by_with_raw_codec_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        make_config(route_by="user", codec="raw")

    message = str(info.value)
    assert message.startswith("invalid value for route_by: 'user'")
    assert "json or msgpack" in message


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_route_by_with_a_decoding_codec(codec: str) -> None:
    assert make_config(route_by="user", codec=codec).route_by == "user"


def test_empty_route_by_means_round_robin() -> None:
    assert make_config(route_by="", codec="json").route_by is None


@pytest.mark.parametrize("name", ["group", "socket"])
def test_nul_characters_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^invalid value for {name}: "):
        make_config(**{name: "ab\0c"})


# -- fuzz -----------------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=8)
    | st.sampled_from(["0660", "rw-rw----", "json", "daemon", "-1", "@abs", "a:b", "1e3", "inf"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
KEYS = st.sampled_from(field_names()) | st.text(max_size=12)


def _check_result(values: dict[str, Any]) -> None:
    try:
        outcome: Config | str = make_config(**values)
    except ConfigError as exc:  # any other exception fails the test
        outcome = str(exc)
    if isinstance(outcome, str):
        assert outcome
        assert "\n" not in outcome, "a config error is one line"
    else:
        assert 0 <= outcome.file_mode <= 0o777
        assert outcome.gid >= -1


@settings(max_examples=300)
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_make_config_returns_a_config_or_raises_config_error(values: dict[str, Any]) -> None:
    _check_result(values)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(field_names()), st.text(max_size=20), max_size=6))
def test_make_config_from_strings_returns_a_config_or_raises_config_error(
    values: dict[str, str],
) -> None:
    _check_result(values)  # what the CLI and the environment pass
