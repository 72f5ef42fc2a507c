"""The socket file: permissions and group, stale and live paths, refusals, cleanup."""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import kernel_refuses_rights
from ugram.config import parse_mode
from ugram.errors import NotASocketError, PathTooLongError, SocketError, SocketInUseError
from ugram.sockets import BoundSocket, bind_socket, unlink_if_ours

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.fixture
def bound() -> Iterator[list[BoundSocket]]:
    """Collects what a test binds; closes the sockets and removes their files at the end."""
    sockets: list[BoundSocket] = []
    yield sockets
    for item in sockets:
        item.sock.close()
        unlink_if_ours(item)


def bind(
    bound: list[BoundSocket], path: Path | str, mode: int = 0o660, gid: int = -1
) -> BoundSocket:
    item = bind_socket(str(path), mode, gid)
    bound.append(item)
    return item


def receives(item: BoundSocket, address: str | bytes, payload: bytes = b"ping") -> bool:
    """True if a datagram sent to ``address`` arrives on ``item``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(payload, address)
    item.sock.settimeout(2)
    try:
        return item.sock.recv(64) == payload
    finally:
        item.sock.setblocking(False)


def file_mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- mode and group -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o660, parse_mode("rw-r-----"), 0o644, 0o000, 0o777])
def test_socket_file_gets_exactly_the_mode(
    sock_dir: Path, bound: list[BoundSocket], mode: int
) -> None:
    path = sock_dir / "s.sock"

    item = bind(bound, path, mode)

    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == mode
    assert item.identity == (info.st_dev, info.st_ino)
    assert item.path == str(path)
    assert receives(item, str(path))


def test_mode_is_applied_whatever_the_umask(sock_dir: Path, bound: list[BoundSocket]) -> None:
    old = os.umask(0o077)
    try:
        bind(bound, sock_dir / "s.sock", 0o660)
    finally:
        os.umask(old)
    assert file_mode(sock_dir / "s.sock") == 0o660
    assert os.umask(old) == old, "the process umask is restored"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing the group needs root")
def test_group_is_applied(sock_dir: Path, bound: list[BoundSocket]) -> None:
    gid = grp.getgrnam("daemon").gr_gid
    assert gid != os.getegid()

    bind(bound, sock_dir / "s.sock", 0o660, gid)

    assert os.lstat(sock_dir / "s.sock").st_gid == gid


def test_group_minus_one_keeps_the_process_group(sock_dir: Path, bound: list[BoundSocket]) -> None:
    bind(bound, sock_dir / "s.sock", 0o660, -1)

    assert os.lstat(sock_dir / "s.sock").st_gid == os.getegid()


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o660, 0o606, 0o060])
def test_file_is_never_wider_than_asked_even_for_a_moment(sock_dir: Path, mode: int) -> None:
    path = sock_dir / "s.sock"
    seen: list[int] = []
    running, stop, saw = threading.Event(), threading.Event(), threading.Event()

    def watch() -> None:
        running.set()
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.append(os.lstat(path).st_mode)
                saw.set()

    old_umask = os.umask(0)  # the worst case: bind() alone would create it 0o777
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        running.wait(2)
        # At least 300 binds, and on until the watcher has seen the file: on a loaded
        # machine the watcher thread may not get the GIL while the file exists.
        for done in range(20_000):
            item = bind_socket(str(path), mode)
            item.sock.close()
            os.unlink(path)
            if done >= 300 and saw.is_set():
                break
    finally:
        stop.set()
        watcher.join()
        sys.setswitchinterval(old_interval)
        os.umask(old_umask)

    assert any(stat.S_ISSOCK(m) for m in seen), "the watcher never saw the file"
    wider = {oct(m & 0o777) for m in seen if m & 0o777 & ~mode}
    assert not wider, f"asked {mode:#o}, observed {sorted(wider)}"


# -- what is already at the path -----------------------------------------------------------------


def test_stale_socket_is_replaced(sock_dir: Path, bound: list[BoundSocket]) -> None:
    path = sock_dir / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(path))
    assert stat.S_ISSOCK(os.lstat(path).st_mode), "the file outlives its socket"

    item = bind(bound, path, 0o600)

    info = os.lstat(path)
    assert item.identity == (info.st_dev, info.st_ino)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert receives(item, str(path))


def test_live_socket_is_refused_and_keeps_receiving(
    sock_dir: Path, bound: list[BoundSocket]
) -> None:
    path = sock_dir / "s.sock"
    first = bind(bound, path)
    inode = os.lstat(path).st_ino

    with pytest.raises(SocketInUseError, match="already in use"):
        bind_socket(str(path), 0o660)

    assert os.lstat(path).st_ino == inode
    assert receives(first, str(path))


def test_live_socket_of_another_program_is_refused(
    sock_dir: Path, bound: list[BoundSocket]
) -> None:
    path = sock_dir / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        other.bind(str(path))
        with pytest.raises(SocketInUseError):
            bind_socket(str(path), 0o660)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"still here", str(path))
        assert other.recv(64) == b"still here"


def test_regular_file_is_refused_and_left_intact(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    path.write_bytes(b"precious data\n")

    with pytest.raises(NotASocketError, match="regular file, not a socket"):
        bind_socket(str(path), 0o660)

    assert path.read_bytes() == b"precious data\n"


def test_directory_is_refused_and_left_intact(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    path.mkdir()
    (path / "inside").write_text("x")

    with pytest.raises(NotASocketError, match="directory"):
        bind_socket(str(path), 0o660)

    assert (path / "inside").read_text() == "x"


@pytest.mark.parametrize("target", ["file", "stale-socket", "missing"])
def test_symlink_is_refused_and_left_intact(sock_dir: Path, target: str) -> None:
    pointee = sock_dir / "pointee"
    if target == "file":
        pointee.write_text("keep me")
    elif target == "stale-socket":
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
            dead.bind(str(pointee))
    path = sock_dir / "s.sock"
    path.symlink_to(pointee)

    with pytest.raises(NotASocketError, match="symbolic link"):
        bind_socket(str(path), 0o660)

    assert os.readlink(path) == str(pointee)
    if target == "file":
        assert pointee.read_text() == "keep me"
    elif target == "stale-socket":
        assert stat.S_ISSOCK(os.lstat(pointee).st_mode)


# -- paths ----------------------------------------------------------------------------------------


def test_longest_path_binds(sock_dir: Path, bound: list[BoundSocket]) -> None:
    path = sock_dir / ("p" * (107 - len(str(sock_dir)) - 1))
    assert len(str(path)) == 107

    assert receives(bind(bound, path), str(path))


def test_path_one_byte_too_long_is_refused(sock_dir: Path) -> None:
    path = sock_dir / ("p" * (108 - len(str(sock_dir)) - 1))

    with pytest.raises(PathTooLongError, match="108 bytes"):
        bind_socket(str(path), 0o660)
    assert not path.exists()


def test_relative_path_is_bound_absolute(
    sock_dir: Path, bound: list[BoundSocket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(sock_dir)

    item = bind(bound, "rel.sock")

    assert item.path == str(sock_dir / "rel.sock")


def test_missing_directory_is_named(sock_dir: Path) -> None:
    parent = sock_dir / "no" / "such"

    with pytest.raises(SocketError, match=f"directory {parent} does not exist"):
        bind_socket(str(parent / "s.sock"), 0o660)


def test_parent_that_is_a_file_is_a_socket_error(sock_dir: Path) -> None:
    (sock_dir / "file").write_text("x")

    with pytest.raises(SocketError, match="Not a directory"):
        bind_socket(str(sock_dir / "file" / "s.sock"), 0o660)


# -- unlink_if_ours -------------------------------------------------------------------------------


def test_unlink_if_ours_removes_our_file(sock_dir: Path, bound: list[BoundSocket]) -> None:
    item = bind(bound, sock_dir / "s.sock")

    assert unlink_if_ours(item) is True
    assert not (sock_dir / "s.sock").exists()
    assert unlink_if_ours(item) is False, "already gone"


def test_unlink_if_ours_leaves_a_successors_socket(
    sock_dir: Path, bound: list[BoundSocket]
) -> None:
    path = sock_dir / "s.sock"
    ours = bind(bound, path)
    os.unlink(path)  # e.g. we began shutting down ...
    successor = bind(bound, path)  # ... and a new server took the path over

    assert unlink_if_ours(ours) is False

    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert receives(successor, str(path))


def test_unlink_if_ours_leaves_a_file_put_in_its_place(
    sock_dir: Path, bound: list[BoundSocket]
) -> None:
    path = sock_dir / "s.sock"
    ours = bind(bound, path)
    os.unlink(path)
    path.write_text("someone else's")

    assert unlink_if_ours(ours) is False
    assert path.read_text() == "someone else's"


# -- abstract names -------------------------------------------------------------------------------


@linux_only
def test_abstract_name_binds_without_a_file(bound: list[BoundSocket]) -> None:
    name = f"@ugram-test-{uuid.uuid4().hex}"

    item = bind(bound, name)

    assert item.is_abstract
    assert item.identity is None
    assert item.path == name
    assert receives(item, b"\0" + name[1:].encode())
    assert unlink_if_ours(item) is False, "nothing to unlink"


@linux_only
def test_abstract_name_in_use_is_refused(bound: list[BoundSocket]) -> None:
    name = f"@ugram-test-{uuid.uuid4().hex}"
    first = bind(bound, name)

    with pytest.raises(SocketInUseError, match="already in use"):
        bind_socket(name, 0o660)

    assert receives(first, b"\0" + name[1:].encode())


@linux_only
def test_abstract_name_too_long_is_refused() -> None:
    with pytest.raises(PathTooLongError):
        bind_socket("@" + "n" * 108, 0o660)


@pytest.mark.parametrize("where", ["file", "abstract"])
def test_bound_sockets_refuse_passed_descriptors(
    bound: list[BoundSocket], sock_dir: Path, where: str
) -> None:
    if not kernel_refuses_rights():
        pytest.skip("this kernel lacks SO_PASSRIGHTS (Linux 6.16)")
    address = str(sock_dir / "s.sock") if where == "file" else f"@ug-rights-{uuid.uuid4().hex}"
    item = bind(bound, address)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.connect(item.sock.getsockname())
        with pytest.raises(PermissionError):  # EPERM: the kernel refuses them at sendmsg
            socket.send_fds(client, [b"x"], [client.fileno()])
        client.send(b"plain")  # a datagram without them still goes through
    assert item.sock.recv(16) == b"plain"
