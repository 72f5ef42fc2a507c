"""Replies without credentials (macOS, the portable profile): rule 9 proven by directories.

Where the kernel gives no sender credentials, a reply goes to a socket path only when its
owner alone can have put it there: a socket with one link, in a directory of its owner's
that nobody else may write, below directories that are root's or its owner's (sticky where
others may write). A real second user attacks a server run with ``UGRAM_PORTABLE=1``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import profile_env, run_server
from tests.security.conftest import Attacker, reply_swap_attack

ASKER = r"""
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(sys.argv[2])
sock.settimeout(float(sys.argv[3]))
sock.sendto(b"hello", sys.argv[1])
try:
    print(sock.recv(100).decode())
except TimeoutError:
    print("no reply")
"""


@pytest.mark.parametrize("swap", ["symlink", "hardlink"])
def test_a_sender_swapping_its_own_socket_gets_no_reply_to_another(
    attacker: Attacker, shared_dir: Path, hostile_dir: Path, out_dir: Path, swap: str
) -> None:
    """The attacker's own directory passes the proof; what it swaps in does not."""
    env = profile_env("portable", out_dir)
    stderr = reply_swap_attack(
        attacker, shared_dir / "s.sock", hostile_dir / "a.sock", swap, out_dir, env, 0.5
    )
    assert ("is not a socket" if swap == "symlink" else "has 2 links") in stderr


def test_a_sender_in_its_own_directory_gets_its_reply_and_one_in_a_shared_one_does_not(
    attacker: Attacker, shared_dir: Path, hostile_dir: Path, out_dir: Path
) -> None:
    path = shared_dir / "s.sock"
    env = profile_env("portable", out_dir)
    with run_server("seqrec:echo", path, "--workers", "1", "--mode", "0666", env=env) as server:
        own = attacker.run(ASKER, str(path), str(hostile_dir / "mine.sock"), "10")
        assert own.stdout.strip() == "HELLO", own.stderr
        # In a directory anyone may write, the socket proves nothing without credentials.
        shared = attacker.run(ASKER, str(path), str(shared_dir / "mine.sock"), "1")
        assert shared.stdout.strip() == "no reply", shared.stderr
        assert server.stop() == 0
    assert "is in a directory that another user owns or may write" in server.stderr
    assert server.summary()["handler_errors"] == 1
