"""The platform's capabilities (ugram.portable): macOS seen from Linux, and the forced profile.

``portable.simulate(portable.for_system("darwin"))`` makes this process take macOS's paths and
limits; ``UGRAM_PORTABLE=1`` is the profile a whole server runs under (tests/integration/
test_portable.py runs one).
"""

from __future__ import annotations

import os
import select
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ugram
from tests.conftest import child_env
from ugram import make_config, portable
from ugram.doctor import check_local_dgram, check_passcred, check_profile, check_queue
from ugram.errors import ConfigError, PathTooLongError, SocketError
from ugram.shm import create_shared_fd
from ugram.sockets import bind_socket, sender_limit_warning, size_receive_buffer
from ugram.wake import clear_wake, make_wake, signal_wake

MACOS = "not available on macOS: the kernel gives no credentials for datagram sockets"


@pytest.fixture
def darwin() -> Iterator[portable.Platform]:
    """This process sees macOS's capabilities and limits."""
    with portable.simulate(portable.for_system("darwin")) as platform:
        yield platform


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process runs under the portable profile, as a server started with it does."""
    monkeypatch.setenv("UGRAM_PORTABLE", "1")


# -- config time: what cannot exist is refused, naming the option ---------------------------

CREDENTIAL_OPTIONS = [
    ("credentials", {"credentials": True}),
    ("allow_uid", {"allow_uid": ["0"]}),
    ("allow_gid", {"allow_gid": ["0"]}),
    ("rate_limit_by", {"rate_limit": "10/s", "rate_limit_by": "pid"}),
    ("rate_limit", {"rate_limit": "10/s"}),  # by uid: a uid needs credentials too
]


@pytest.mark.parametrize(
    ("option", "values"), CREDENTIAL_OPTIONS, ids=[c[0] for c in CREDENTIAL_OPTIONS]
)
def test_credential_options_are_refused_on_macos(
    darwin: portable.Platform, option: str, values: dict[str, object]
) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(socket="/tmp/s.sock", **values)
    assert str(info.value).startswith(f"invalid value for {option}: ")
    assert MACOS in str(info.value)


@pytest.mark.usefixtures("forced")
def test_the_forced_profile_refuses_them_too_and_says_why() -> None:
    with pytest.raises(ConfigError, match=f"credentials: True .*{MACOS}.*UGRAM_PORTABLE=1"):
        make_config(socket="/tmp/s.sock", credentials=True)
    # Nothing else depends on credentials: a replying handler gets none, and is accepted.
    assert not make_config(socket="/tmp/s.sock", handler="app:handle").wants_credentials


def test_linux_accepts_them() -> None:
    for _, values in CREDENTIAL_OPTIONS:
        assert make_config(socket="/tmp/s.sock", **values).wants_credentials


def test_a_bad_profile_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UGRAM_PORTABLE", "maybe")
    with pytest.raises(ConfigError, match="invalid value for UGRAM_PORTABLE: 'maybe'"):
        make_config(socket="/tmp/s.sock")


@pytest.mark.parametrize("option", ["socket", "metrics"])
def test_abstract_names_are_refused_on_macos(darwin: portable.Platform, option: str) -> None:
    values = {"socket": "/tmp/s.sock", option: "@app"}
    with pytest.raises(ConfigError, match=f"invalid value for {option}: '@app' .*exist only on"):
        make_config(**values)


def test_abstract_names_are_refused_by_the_socket_layer_and_the_client(
    darwin: portable.Platform,
) -> None:
    with pytest.raises(SocketError, match="@app: not available on macOS: abstract socket"):
        bind_socket("@app", 0o660)
    with pytest.raises(ConfigError, match="@app: not available on macOS"):
        ugram.Client("@app")


# -- sun_path: 104 bytes on macOS, 108 on Linux, NUL included -------------------------------


def test_a_socket_path_over_macos_sun_path_is_refused_naming_path_and_limit(
    darwin: portable.Platform, sock_dir: Path
) -> None:
    fits = sock_dir / ("p" * (103 - len(str(sock_dir)) - 1))
    over = sock_dir / ("q" * (104 - len(str(sock_dir)) - 1))
    with pytest.raises(PathTooLongError) as info:
        bind_socket(str(over), 0o660)
    assert f"socket path {over} is 104 bytes; AF_UNIX allows at most 103 on macOS" in str(
        info.value
    )
    assert not over.exists()
    bound = bind_socket(str(fits), 0o660)  # 103 bytes: what macOS can bind
    bound.sock.close()
    os.unlink(fits)


# -- datagram sizes: macOS's small default buffers -------------------------------------------


def test_the_server_warns_when_senders_cannot_carry_max_datagram(
    darwin: portable.Platform,
) -> None:
    warning = sender_limit_warning(65536)
    assert warning is not None
    assert "max_datagram=65536" in warning
    assert "(2048 bytes, net.local.dgram.maxdgram)" in warning
    assert sender_limit_warning(2048) is None


def test_linux_default_send_buffers_carry_the_default_max_datagram() -> None:
    assert sender_limit_warning(65536) is None
    warning = sender_limit_warning(16 << 20)
    assert warning is not None
    assert "net.core.wmem_default" in warning


def test_the_server_receive_buffer_is_raised_to_hold_datagrams_on_macos(
    darwin: portable.Platform,
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        assert size_receive_buffer(sock, 65536) >= 65536 + 512
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        pytest.raises(SocketError, match=r"max_datagram=16777216 does not fit .*SO_RCVBUF"),
    ):
        size_receive_buffer(sock, 16 << 20)  # more than this kernel grants (rmem_max)


def test_ugram_send_reports_a_datagram_over_the_kernel_limit(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    size = 2 * int(Path("/proc/sys/net/core/wmem_max").read_text()) + 4096
    if size > 64 << 20:
        pytest.skip("wmem_max is raised so far that no datagram here is over it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        done = subprocess.run(
            [sys.executable, "-m", "ugram", "send", str(path), "--max-datagram", str(size)],
            input=b"x" * size,
            env=child_env(),
            capture_output=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    error = done.stderr.decode()
    assert f"refused a {size}-byte datagram (EMSGSIZE)" in error
    assert "takes datagrams of at most" in error
    assert "net.core.wmem_max" in error


def test_the_client_raises_its_send_buffer_to_fit_max_datagram(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        default = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    size = default + 1024  # over what a default socket may send (sndbuf - 32)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        with ugram.Client(path, max_datagram=size) as client:
            assert client.send(b"y" * size)
        assert len(server.recv(size + 1)) == size


# -- the fallbacks themselves -----------------------------------------------------------------


@pytest.mark.usefixtures("forced")
def test_shared_memory_is_an_unlinked_private_file_without_memfd() -> None:
    fd = create_shared_fd(1 << 16)
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
        info = os.fstat(fd)
    finally:
        os.close(fd)
    assert target.startswith("/dev/shm/ugram-")
    assert target.endswith("/shared (deleted)")
    assert not os.path.exists(os.path.dirname(target))  # its private directory is gone too
    assert (info.st_nlink, info.st_size, stat.S_IMODE(info.st_mode)) == (0, 1 << 16, 0o600)
    assert info.st_uid == os.geteuid()


def test_shared_memory_is_a_memfd_on_linux() -> None:
    fd = create_shared_fd(4096)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:ugram")
    finally:
        os.close(fd)


@pytest.mark.usefixtures("forced")
def test_a_pipe_wake_up_is_cleared_however_many_came() -> None:
    read_fd, write_fd = make_wake()
    try:
        assert read_fd != write_fd
        assert stat.S_ISFIFO(os.fstat(read_fd).st_mode)
        for _ in range(1000):  # more than one read of the pipe takes
            signal_wake(write_fd)
        poller = select.poll()
        poller.register(read_fd, select.POLLIN)
        assert poller.poll(0)
        clear_wake(read_fd)
        assert poller.poll(0) == []  # the next sleep blocks
        signal_wake(write_fd)
        assert poller.poll(0)
    finally:
        os.close(read_fd)
        os.close(write_fd)


# -- ugram doctor -----------------------------------------------------------------------------


def test_doctor_gives_macos_buffer_advice_instead_of_max_dgram_qlen(
    darwin: portable.Platform,
) -> None:
    values = {"net.local.dgram.recvspace": 8192, "net.local.dgram.maxdgram": 2048}
    config = make_config(socket="/tmp/s.sock")
    finding = check_local_dgram(config, values.get)
    assert finding.level == "warn"
    assert finding.title == "net.local.dgram.recvspace = 8192, net.local.dgram.maxdgram = 2048"
    assert "sysctl -w net.local.dgram.maxdgram=65536" in finding.advice
    assert "max_dgram_qlen" not in finding.title + finding.detail + finding.advice
    assert check_local_dgram(config, {**values, "net.local.dgram.maxdgram": 65536}.get).level == (
        "ok"
    )
    assert "max_dgram_qlen" not in check_queue(config).title
    assert MACOS in check_passcred(config).detail


@pytest.mark.usefixtures("forced")
def test_doctor_says_which_paths_the_forced_profile_takes() -> None:
    finding = check_profile()
    assert finding.title == "platform: Linux, portable paths"
    for path in ("one recvfrom per datagram", "rings in unlinked files", "pipe wake-ups"):
        assert path in finding.detail
    assert "unset UGRAM_PORTABLE" in finding.detail


def test_doctor_says_linux_takes_its_own_paths() -> None:
    finding = check_profile()
    assert (finding.level, finding.title) == ("ok", "platform: Linux")
    assert "recvmmsg" in finding.detail
