"""Every file, directory and socket file ugram creates, opens or changes: the trust rules.

ugram may run as root next to hostile local users, and ``fs.protected_symlinks`` /
``fs.protected_regular`` may be off, so nothing here relies on them. The rules (also in
``docs/security.md``):

1. **No symlink is followed** where another user could have planted it. Paths are walked one
   component at a time from ``/`` with ``O_DIRECTORY | O_NOFOLLOW``; a symlink component is
   followed only if it is owned by root or by us and sits in a directory no other user may
   write (``/var/run -> /run`` is fine, ``/tmp/evil -> /etc`` is not). Files are opened
   ``O_NOFOLLOW | O_CLOEXEC`` relative to the directory fd, never by path again. A client
   connecting to a socket path (:func:`socket_target`) keeps the same rule, for the last
   component too, and connects through a descriptor of the inode it checked.
2. **Directories are classified** (:func:`classify`): *private* (owned by root or us, writable
   by nobody else), *shared* (world- or group-writable with the sticky bit, like ``/tmp``:
   allowed, warned) and *unsafe* (writable by others without the sticky bit, or owned by
   another non-root user, or below such a directory): refused unless the operator passes
   ``allow_unsafe``. Nothing is created below an unsafe directory that will be refused:
   the walk refuses before its first ``mkdir`` there.
3. **Mode and owner are set only on an inode ugram created itself**, through a descriptor or
   inside a private directory of its own, never through a path another user could swap. In
   a private or sticky directory a socket file is bound at its real path with at most the
   owner's bits of its mode, then opened ``O_PATH | O_NOFOLLOW``, checked (a socket, ours,
   one link) and given its group and mode through ``/proc/self/fd/N``; in an accepted unsafe
   directory it is bound inside a fresh 0700 directory, given its group and mode there, then
   hard-linked into place (``link`` never replaces what is there) after the live/stale probe.
4. **A file that already exists** is used only if it is a regular file owned by root or us,
   with a single link (a hard link to ``/etc/shadow`` would pass every other test) and not
   writable by group or others; otherwise the caller gets :class:`UnsafePathError` naming the
   path, its owner and what to do. It is opened ``O_NONBLOCK | O_NOCTTY`` and checked on the
   descriptor before it is used, so a FIFO or a device planted at the name can neither block
   the server nor become its terminal.
5. **Explicit modes**: every file and directory gets the mode the caller names (``fchmod``
   after creation), whatever the umask; a directory created for a socket also gets the
   socket's group (``fchown`` on the directory's descriptor).
6. **Probes never wait**: telling a live socket from a stale one is a non-blocking
   ``connect``, so a squatter whose queue is full cannot hang start-up or ``ugram doctor``.

The package, one job a module: :mod:`~ugram.safefs.walk` walks to directories and classifies
them, :mod:`~ugram.safefs.files` opens, writes and renames regular files in them,
:mod:`~ugram.safefs.binding` probes, binds and unlinks the server's socket files,
:mod:`~ugram.safefs.peers` reaches the sockets of others (a reply's sender, a client's
server), and :mod:`~ugram.safefs.paths` says where ugram's own files go. Every other module
goes through the names re-exported here.
"""

from .binding import bind_at as bind_at
from .binding import probe_at as probe_at
from .binding import unlink_at as unlink_at
from .files import check_existing as check_existing
from .files import open_file as open_file
from .files import read_file as read_file
from .files import rename_in as rename_in
from .files import write_replace as write_replace
from .paths import default_data_path as default_data_path
from .paths import state_dir as state_dir
from .peers import open_owned_socket as open_owned_socket
from .peers import open_peer_socket as open_peer_socket
from .peers import socket_target as socket_target
from .walk import UNSAFE_ADVICE as UNSAFE_ADVICE
from .walk import Dir as Dir
from .walk import DirKind as DirKind
from .walk import classify as classify
from .walk import open_dir as open_dir
from .walk import owner_name as owner_name
from .walk import parent_of as parent_of
from .walk import trusted_uids as trusted_uids

__all__ = [
    "UNSAFE_ADVICE",
    "Dir",
    "DirKind",
    "bind_at",
    "check_existing",
    "classify",
    "default_data_path",
    "open_dir",
    "open_file",
    "open_owned_socket",
    "open_peer_socket",
    "owner_name",
    "parent_of",
    "probe_at",
    "read_file",
    "rename_in",
    "socket_target",
    "state_dir",
    "trusted_uids",
    "unlink_at",
    "write_replace",
]
