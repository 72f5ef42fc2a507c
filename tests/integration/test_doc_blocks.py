"""Every code block of README.md and docs/*.md: run for real, or listed here with why not (#19).

The blocks are read from the Markdown (as ``tests/unit/test_docs.py`` reads the reference) and
known by their file, section heading, info string and the start of their first line
(trailing comment and extra spaces left out; enough of it to tell the blocks of a section
apart): a block may move within its section or change past that start and is still known. A
block no entry of ``BLOCKS`` knows, an entry that names no block or several, fails
``test_every_block_is_classified`` with what to do; so does an expected output (``stdout``)
that the docs no longer show.

How the kinds run (each in a fresh scratch directory under /tmp, with every ``File`` block
of every doc written there first: the README's ``app.py`` is beside every command):

* ``File``: a block whose first line is ``# NAME.py`` or ``# NAME.toml`` becomes the file NAME.
* ``Shell``: the logical lines (``\\`` continuations joined, comment lines left out) run one
  at a time with /bin/sh, in the scratch directory or (``in_checkout``) the checkout's root.
  A ``ugram serve`` line starts a real server in the background and waits for ``listening
  on`` on its stderr; a line ending in ``&`` runs in the background and must not fail; any
  other line must exit 0. Then each server gets SIGTERM and must exit 0, leave neither its
  socket nor its control socket behind, and report no handler errors and no invalid
  datagrams (unless the block expects some). A line needing a tool that is absent (socat,
  logger, curl, taskset, the ``datadog`` package) is left out and the reason recorded (shown
  under "doc lines not run" at the end of the pytest run).
* ``Script``: a Python snippet, written to a file and run with ``python`` against the servers
  it talks to (started by the test with the lines given); it must exit 0 and print what the
  doc says it prints.
* ``Handler``: a handler fragment of docs/handlers.md, served as module ``doc_handler`` with
  ``HANDLER_PRELUDE`` (stand-ins for the reader's own ``connect()``, ``store()``, ``Metric``)
  in front, and sent one datagram; it must handle it without error.
* ``Pytest``: the README's test function, run with pytest in a subprocess beside ``app.py``.
* ``Systemd``: the units of a section, checked with ``systemd-analyze verify`` (no output
  allowed) where it exists.

Substitutions, the only rewriting of the docs' text (``Session.localize``, on every block):

* ``/tmp/NAME`` -> ``SCRATCH/NAME``: runs in parallel must not share sockets.
* ``/run/app/``, ``/run/client/``, ``/var/log/`` -> ``SCRATCH/run/app/``,
  ``SCRATCH/run/client/``, ``SCRATCH/var/log/``, created (with ``var/log/app``) as the docs
  say they must exist: the test writes no system directory.
* ``127.0.0.1:9101`` -> ``127.0.0.1:PORT``, a free port: that one may be taken.
* ``--group app`` -> ``--group`` and the test's own group: there is no group ``app`` here.
* ``\\0client-42`` -> ``\\0client-42-PID``: abstract names are machine-wide.
* ``/opt/app/venv/bin/ugram`` (systemd units) -> the ``ugram`` script below:
  ``systemd-analyze verify`` checks that the binary exists.
* ``python3 -m venv ...``, ``. .venv/bin/activate`` and ``pip install ...`` steps of an
  ``&&`` line are left out: the test runs in the installed environment.
* ``ugram``, ``python``, ``python3`` are scripts first on ``PATH`` that run
  ``sys.executable -m ugram`` and ``sys.executable``: the interpreter under test.
* a ``ugram serve`` line without ``--socket`` gets ``UGRAM_SOCKET=SCRATCH/ugram.sock`` in its
  environment: the default /tmp/ugram.sock is shared.

Every process also gets ``PYTHONPATH`` = the checkout (its ugram, as an editable install
would give) and no ``UGRAM_*`` variable of the test's own environment.
"""

from __future__ import annotations

import contextlib
import grp
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
FILE_NAME = re.compile(r"^# ([\w.-]+\.(?:py|toml))\b")
TOOLS = frozenset({"socat", "logger", "curl", "taskset"})
OPTIONAL_MODULES = frozenset({"datadog"})
STARTUP_TIMEOUT = 60.0  # seconds: the machines are shared and slow
LINE_TIMEOUT = 60.0

Key = tuple[str, str, str, str]  # file, heading, info string, start of the first line


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown file."""

    path: str
    heading: str
    info: str
    code: str
    line: int

    @property
    def key(self) -> Key:
        return (self.path, self.heading, self.info, first_line(self.code))

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line} (section {self.heading!r}, ```{self.info})"


def first_line(code: str) -> str:
    """The block's first non-blank line, its trailing comment and extra spaces left out."""
    line = next((raw.strip() for raw in code.splitlines() if raw.strip()), "")
    if not line.startswith("#"):
        line = re.sub(r"\s+#\s.*$", "", line)
    return " ".join(line.split())


def extract(doc: Path) -> list[Block]:
    """Every fenced block of ``doc``, with the heading of the section it is in."""
    rel = doc.relative_to(REPO).as_posix()
    lines = doc.read_text().splitlines()
    blocks: list[Block] = []
    heading, i = "", 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            if lines[i].startswith("#"):
                heading = lines[i].lstrip("#").strip()
            i += 1
            continue
        fence, info, start = match.group(1), match.group(2), i
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        assert i < len(lines), f"{rel}:{start + 1}: unclosed code block"
        code = "\n".join(lines[start + 1 : i]) + "\n"
        blocks.append(Block(rel, heading, info, code, start + 1))
        i += 1
    return blocks


ALL_BLOCKS = [block for doc in DOCS for block in extract(doc)]


# -- the kinds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotRun:
    """Not run, and why."""

    reason: str


@dataclass(frozen=True)
class File:
    """Written as the file its first line names."""


@dataclass(frozen=True)
class FileCheck:
    """After the servers stopped, ``path`` (as in the docs) must contain ``text``."""

    path: str
    text: str
    needs: str = ""  # a tool or module without which nothing writes it


@dataclass(frozen=True)
class Shell:
    """Run line by line (module docstring)."""

    in_checkout: bool = False
    before: tuple[Key, ...] = ()  # blocks whose lines run first, their servers still up
    # a line's start -> what it prints, as the block (or else the docs) shows it
    stdout: Mapping[str, str] = field(default_factory=dict)
    files: tuple[FileCheck, ...] = ()
    counters: Mapping[str, int] = field(default_factory=dict)  # expected in the summary


@dataclass(frozen=True)
class RunWith:
    """Run as part of another block's test."""

    key: Key


@dataclass(frozen=True)
class Script:
    """A Python snippet run with ``python`` against the servers it needs."""

    servers: tuple[tuple[str, bool], ...]  # (ugram serve line, in the checkout?)
    stdout: str  # what it prints, as the block shows it
    handler: Key | None = None  # a Handler fragment the servers serve as doc_handler


@dataclass(frozen=True)
class Handler:
    """A handler fragment served with the ``serve`` line and sent the ``send`` line."""

    serve: str
    send: str


@dataclass(frozen=True)
class Pytest:
    """A test module, run with pytest beside the File blocks."""


@dataclass(frozen=True)
class Systemd:
    """A unit file, verified with the other units of its section."""


Kind = NotRun | File | Shell | RunWith | Script | Handler | Pytest | Systemd

R, H, OPS = "README.md", "docs/handlers.md", "docs/operations.md"
ARCH, HOSTS = "docs/architecture.md", "docs/many-hosts.md"
PLAT = "docs/platforms.md"
NEEDS_NATS = "needs a NATS server: tests/nats/test_docs.py runs it against a real one"
BUILTINS = "Built-in handlers and examples"
VENV = "python3 -m venv .venv && . .venv/bin/activate && pip install"
QUICK_SERVE: Key = (R, "Quick start", "sh", f"{VENV} . && ugram serve")
QUICK_SEND: Key = (R, "Quick start", "sh", "ugram send /tmp/ugram.sock")
REPLY_HANDLER: Key = (H, "Replies", "python", "def handle(data: bytes, dgram")
REPLY_SENDER: Key = (H, "Replies", "python", "# the sender")
METRIC = 'ugram send /tmp/h.sock \'{"name": "cpu", "value": 0.5}\''
SEEN_IN_OBSERVABILITY = "an output listing: README's Observability block runs `ugram {}`"

# Each block of the docs, by (file, section heading, info string, the start of its
# normalized first line: enough to tell it from the other blocks of its section).
BLOCKS: dict[Key, Kind] = {
    # README.md
    QUICK_SERVE: RunWith(QUICK_SEND),
    (R, "Quick start", "sh", f"{VENV} -e '.[test]' && pytest"): NotRun(
        "the install and the whole test suite: .ci/run runs exactly this"
    ),
    QUICK_SEND: Shell(before=(QUICK_SERVE,)),
    (R, "Your handler", "python", "# app.py"): File(),
    (R, "Your handler", "sh", "ugram serve app:handle"): Shell(),
    (R, BUILTINS, "sh", "# a local syslog daemon"): Shell(
        files=(
            FileCheck("/var/log/app.jsonl", "invoice 42 sent", needs="logger"),
            FileCheck("statsd/totals.json", '"hits"', needs="datadog"),
            FileCheck("statsd/statsd.jsonl", '"hits"', needs="datadog"),
        ),
    ),
    (R, BUILTINS, "sh", "ugram serve examples.fanout:FanOut"): Shell(
        in_checkout=True, stdout={"python examples/control.py": '{"ok":true,"result":6.0}'}
    ),
    (R, "Sending", "python", "import ugram"): Script(
        servers=(
            ("ugram serve app:handle --codec json --socket /tmp/app.sock", False),
            (
                "ugram serve examples.control:Control --codec json --credentials "
                "--socket /tmp/ctl.sock",
                True,
            ),
        ),
        stdout='b\'{"ok":true,"result":3.0}\'',
    ),
    (R, "Testing your handler", "python", "import app"): Pytest(),
    (R, "Embedding", "python", "# serve.py"): File(),
    (R, "Configuration", "toml", "# app.toml"): File(),
    (R, "Observability", "sh", "ugram serve app:handle"): Shell(
        stdout={"ugram config": "# file ", "curl": "ugram_received_total"}
    ),
    (R, "Architecture", "", "Supervisor"): NotRun("a diagram"),
    # docs/handlers.md
    (H, "Typed handlers", "python", "import msgspec"): Handler(
        "ugram serve doc_handler:handle --codec json --socket /tmp/h.sock", METRIC
    ),
    (H, "Class handlers", "python", "class Ingest:"): Handler(
        "ugram serve doc_handler:Ingest --codec json --socket /tmp/h.sock", METRIC
    ),
    REPLY_HANDLER: RunWith(REPLY_SENDER),
    REPLY_SENDER: Script(
        servers=(("ugram serve doc_handler:handle --socket /run/app/ingest.sock", False),),
        stdout="b'ack hello'",
        handler=REPLY_HANDLER,
    ),
    (H, "Batch handlers and `tick()`", "python", "class BulkInsert:"): Handler(
        "ugram serve doc_handler:BulkInsert --codec json --socket /tmp/h.sock", METRIC
    ),
    # docs/operations.md
    (OPS, "Before the first start: `ugram doctor`", "console", "$ ugram doctor"): NotRun(
        SEEN_IN_OBSERVABILITY.format("doctor")
    ),
    (OPS, "`net.unix.max_dgram_qlen`", "sh", "sysctl -w"): NotRun(
        "changes a kernel setting, as root, and writes /etc/sysctl.d"
    ),
    (OPS, "Small machines: where the processes run", "sh", "taskset -c 0 ugram serve"): Shell(),
    ("docs/portable.md", "Forcing it on Linux", "sh", "UGRAM_PORTABLE=1 ugram serve"): Shell(),
    (OPS, "Without socket activation", "ini", "# /etc/systemd/system/app-ingest.service"): (
        Systemd()
    ),
    (OPS, "With socket activation", "ini", "# /etc/systemd/system/app-ingest.socket"): Systemd(),
    (OPS, "With socket activation", "ini", "# /etc/systemd/system/app-ingest.service"): Systemd(),
    (OPS, "With socket activation", "ini", "# /etc/tmpfiles.d/app.conf"): NotRun(
        "a tmpfiles.d line: systemd-tmpfiles cannot check it without a user and group 'app'"
    ),
    (OPS, "`ugram stats`", "console", "$ ugram stats"): NotRun(
        SEEN_IN_OBSERVABILITY.format("stats")
    ),
    (OPS, "Prometheus", "yaml", "scrape_configs:"): NotRun("Prometheus' configuration"),
    (ARCH, "Architecture", "", "supervisor"): NotRun("a diagram"),
    (OPS, "Logging", "toml", "# logging.toml"): File(),
    (OPS, "Logging", "sh", "ugram serve app:handle"): Shell(
        files=(FileCheck("/var/log/app/ugram.log", "WARNING"),), counters={"invalid": 1}
    ),
    # docs/many-hosts.md
    (HOSTS, "Running ugram on many hosts", "", "host A:"): NotRun("a diagram"),
    (HOSTS, "Forwarding every datagram: `ugram.builtin:Forward`", "sh", "UGFORWARD_SERVERS"): (
        NotRun(NEEDS_NATS)
    ),
    (HOSTS, "Forwarding from your own handler: `JetStreamSink`", "python", "# forward_app.py"): (
        File()
    ),
    (HOSTS, "Forwarding from your own handler: `JetStreamSink`", "sh", "NATS_URL="): NotRun(
        NEEDS_NATS
    ),
    (HOSTS, "What a consumer on the other side does", "python", "# consumer.py"): File(),
    (OPS, "Configuration", "console", "$ UGRAM_WORKERS=8 ugram config"): NotRun(
        SEEN_IN_OBSERVABILITY.format("config") + " (on app.toml; /etc/app/ugram.toml is not shown)"
    ),
    # docs/platforms.md
    (PLAT, "Memory ordering", "console", "$ ugram doctor --socket /run/app/ingest.sock"): NotRun(
        "an arm64 machine's output; this machine's doctor runs in README's Observability "
        "block, and tests/unit/test_ordering.py checks the line for each ordering"
    ),
    (PLAT, "The arm64 check: `tools/arm64-check`", "sh", "sudo tools/arm64-check"): NotRun(
        "as root: debootstrap, qemu-user and binfmt_misc, tens of minutes; a maintainer's "
        "check, too slow for CI (its last run is recorded in docs/platforms.md)"
    ),
    (PLAT, "Wheels", "yaml", "jobs:"): NotRun(
        "a GitHub Actions workflow: it runs on GitHub's runners (the configuration it uses "
        "is pyproject.toml's, checked with cibuildwheel --print-build-identifiers)"
    ),
}


def matches(key: Key, block: Block) -> bool:
    """Whether the table's ``key`` names ``block``."""
    path, heading, info, start = key
    where = (block.path, block.heading, block.info)
    return where == (path, heading, info) and first_line(block.code).startswith(start)


def entries_of(block: Block) -> list[Key]:
    return [key for key in BLOCKS if matches(key, block)]


BY_KEY: dict[Key, Block] = {key: b for b in ALL_BLOCKS for key in entries_of(b)}

HANDLER_PRELUDE = """\
# stand-ins for what the fragments take from the reader's own code
import msgspec
import ugram


class Metric(msgspec.Struct):
    name: str
    value: float


class _Db:
    def insert(self, *args: object) -> None: ...
    def insert_many(self, rows): list(rows)  # runs the fragment's generator
    def commit(self) -> None: ...
    def close(self) -> None: ...


def connect() -> _Db:
    return _Db()


def store(*args: object) -> None: ...


"""


def keys_of(kind: type) -> list[Key]:
    return [key for key, value in BLOCKS.items() if isinstance(value, kind)]


def fmt(key: Key) -> str:
    """A block's key, as test ids and messages show it."""
    path, heading, info, first = key
    return f"{path} [{heading}] {info}: {first}"


# -- the scratch directory and the processes in it ------------------------------------------


@dataclass
class Proc:
    """A server or background command started from a doc line."""

    line: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    socket: Path | None = None

    def text(self) -> str:
        return f"{self.out.read_text(errors='replace')}{self.err.read_text(errors='replace')}"


class Session:
    """A scratch directory with the File blocks in it, and what the doc lines started."""

    def __init__(self, root: Path, request: pytest.FixtureRequest) -> None:
        self.root = root
        self.request = request
        self.port = _free_port()
        self.servers: list[Proc] = []
        self.background: list[Proc] = []
        self.logs = root / ".logs"
        bindir = root / ".bin"
        for directory in (
            self.logs,
            bindir,
            root / "run/app",
            root / "run/client",
            root / "var/log/app",
        ):
            directory.mkdir(parents=True)
        _wrapper(bindir / "ugram", f'exec "{sys.executable}" -m ugram "$@"')
        for name in ("python", "python3"):
            _wrapper(bindir / name, f'exec "{sys.executable}" "$@"')
        self.bindir = bindir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("UGRAM_")}
        self.env["PATH"] = f"{bindir}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["PYTHONPATH"] = str(REPO)
        for key in keys_of(File):
            if key in BY_KEY:  # else test_every_block_is_classified says what is amiss
                self.write(BY_KEY[key])

    # -- text ---------------------------------------------------------------------------

    def localize(self, text: str) -> str:
        """Apply the substitution table of the module docstring."""
        group = grp.getgrgid(os.getgid()).gr_name
        table = {
            "/run/app/": f"{self.root}/run/app/",
            "/run/client/": f"{self.root}/run/client/",
            "/var/log/": f"{self.root}/var/log/",
            "/tmp/": f"{self.root}/",
            "127.0.0.1:9101": f"127.0.0.1:{self.port}",
            "--group app": f"--group {group}",
            "\\0client-42": f"\\0client-42-{os.getpid()}",
            "/opt/app/venv/bin/ugram": str(self.bindir / "ugram"),
        }
        pattern = "|".join(re.escape(k) for k in table)
        return re.sub(pattern, lambda m: table[m.group(0)], text)

    def write(self, block: Block, name: str | None = None) -> Path:
        match = FILE_NAME.match(first_line(block.code))
        name = name or (match.group(1) if match else None)
        assert name, f"{block.where}: no file name on its first line"
        path = self.root / name
        path.write_text(self.localize(block.code))
        return path

    def skip(self, line: str, why: str) -> None:
        self.request.node.user_properties.append(("doc_line_not_run", f"{line}  ({why})"))

    # -- lines ----------------------------------------------------------------------------

    def run_block(self, block: Block, kind: Shell) -> None:
        for line in logical_lines(block.code):
            self.run_line(line, in_checkout=kind.in_checkout, stdout=_expected(kind, line))

    def run_line(self, doc_line: str, in_checkout: bool = False, stdout: str = "") -> None:
        """Run one logical line of a shell block as the table says (module docstring)."""
        line = _drop_install(self.localize(doc_line))
        if not line:
            return
        tokens = shlex.split(line, comments=True)
        needed = set(tokens) & TOOLS
        needed |= {m for m in OPTIONAL_MODULES if re.search(rf"\b(from|import) {m}\b", line)}
        missing = sorted(name for name in needed if not _available(name))
        if missing:
            self.skip(doc_line, f"{', '.join(missing)} not installed")
            return
        cwd = REPO if in_checkout else self.root
        env_vars, argv = _split_env(tokens)
        if "ugram" in argv and argv[argv.index("ugram") + 1 : argv.index("ugram") + 2] == ["serve"]:
            self.start_server(argv, cwd, env_vars, doc_line)
        elif tokens[-1] == "&":
            self.start_background(re.sub(r"\s&\s*(#.*)?$", "", line), cwd, doc_line)
        else:
            done = subprocess.run(
                ["/bin/sh", "-c", line],
                cwd=cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=LINE_TIMEOUT,
            )
            assert done.returncode == 0, (
                f"{doc_line!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
            assert stdout in done.stdout, f"{doc_line!r} printed {done.stdout!r}, not {stdout!r}"

    def _popen(self, argv: list[str], cwd: Path, env: dict[str, str], line: str) -> Proc:
        n = len(self.servers) + len(self.background)
        out, err = self.logs / f"{n}.out", self.logs / f"{n}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, start_new_session=True
            )
        return Proc(line, proc, out, err)

    def start_server(
        self, argv: list[str], cwd: Path, env_vars: dict[str, str], line: str, sock: str = ""
    ) -> Proc:
        """Start a server and wait until it says it listens (or fail with its stderr)."""
        env = {**self.env, **env_vars}
        if not sock:
            sock = _option(argv, "--socket") or env.setdefault(
                "UGRAM_SOCKET", str(self.root / "ugram.sock")
            )
        server = self._popen(argv, cwd, env, line)
        server.socket = Path(sock)
        self.servers.append(server)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while "listening on" not in server.err.read_text(errors="replace"):
            if server.proc.poll() is not None:
                pytest.fail(f"{line!r} exited {server.proc.returncode}:\n{server.text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{line!r} did not say 'listening on':\n{server.text()}")
            time.sleep(0.02)
        return server

    def start_background(self, line: str, cwd: Path, doc_line: str) -> None:
        self.background.append(self._popen(["/bin/sh", "-c", line], cwd, self.env, doc_line))
        time.sleep(1.0)  # the moment a reader takes to type the next line

    def stop(self, counters: Mapping[str, int] | None = None) -> None:
        """Stop the background commands, then each server with SIGTERM, and check them."""
        for job in self.background:
            code = job.proc.poll()
            assert code in (None, 0), f"{job.line!r} exited {code}:\n{job.text()}"
            _kill_group(job.proc)
        expected = {"handler_errors": 0, "invalid": 0, **(counters or {})}
        for server in self.servers:
            server.proc.send_signal(signal.SIGTERM)  # all at once: they drain side by side
        for server in self.servers:
            code = server.proc.wait(STARTUP_TIMEOUT)
            assert code == 0, f"{server.line!r} exited {code} on SIGTERM:\n{server.text()}"
            assert server.socket is not None
            for path in (server.socket, Path(f"{server.socket}.ctl")):
                assert not path.exists(), f"{server.line!r} left {path} behind"
            summary = _summary(server.err.read_text(errors="replace"))
            got = {name: summary.get(name) for name in expected}
            assert got == expected, f"{server.line!r}: {got}, not {expected}:\n{server.text()}"
        self.servers.clear()
        self.background.clear()

    def kill_all(self) -> None:
        for proc in (*self.background, *self.servers):
            _kill_group(proc.proc)


def logical_lines(code: str) -> list[str]:
    """The block's commands: continuations joined, blank and comment lines left out."""
    lines: list[str] = []
    pending = ""
    for raw in code.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = " ".join((pending + raw).split())
        pending = ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _drop_install(line: str) -> str:
    """Leave out the venv and pip steps of an ``&&`` chain: the test runs installed."""
    install = re.compile(r"^(python3? -m venv|\. \S*activate|pip install)\b")
    if not any(install.match(part.strip()) for part in line.split("&&")):
        return line
    return " && ".join(p for p in (p.strip() for p in line.split("&&")) if not install.match(p))


def _split_env(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    i = 0
    while i < len(tokens) and re.match(r"^[A-Za-z_]\w*=", tokens[i]):
        i += 1
    return dict(t.split("=", 1) for t in tokens[:i]), tokens[i:]


def _option(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return ""


def _expected(kind: Shell, line: str) -> str:
    return next((text for start, text in kind.stdout.items() if line.startswith(start)), "")


def _summary(stderr: str) -> dict[str, int]:
    match = re.search(r"stopped: (.*)", stderr)
    assert match, f"no 'stopped:' line:\n{stderr}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def _available(name: str) -> bool:
    """Whether the tool (TOOLS) or Python module (OPTIONAL_MODULES) ``name`` is installed."""
    if name in OPTIONAL_MODULES:
        return importlib.util.find_spec(name) is not None
    return shutil.which(name) is not None


def _wrapper(path: Path, command: str) -> None:
    path.write_text(f"#!/bin/sh\n{command}\n")
    path.chmod(0o755)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@pytest.fixture
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    root = Path(tempfile.mkdtemp(prefix="ugd", dir="/tmp"))  # short: AF_UNIX paths
    try:
        sess = Session(root, request)
        try:
            yield sess
        finally:
            sess.kill_all()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the tests --------------------------------------------------------------------------------


def test_every_block_is_classified() -> None:
    """Each block of the docs is named by exactly one entry of BLOCKS, and each entry by one."""
    unknown = [block for block in ALL_BLOCKS if not entries_of(block)]
    assert not unknown, "\n".join(
        f"{block.where} is a code block that tests/integration/test_doc_blocks.py does not "
        f"know: add {block.key!r} (or the start of its first line) to BLOCKS there, as "
        "Shell() to run it, File() for a '# NAME.py' or '# NAME.toml' file, Script, Handler, "
        "Pytest or Systemd, or NotRun('why it cannot run')"
        for block in unknown
    )
    ambiguous = [f"{b.where}: {entries_of(b)}" for b in ALL_BLOCKS if len(entries_of(b)) > 1]
    assert not ambiguous, f"blocks named by more than one entry of BLOCKS: {ambiguous}"
    for key in BLOCKS:
        named = [block.where for block in ALL_BLOCKS if matches(key, block)]
        assert named, f"BLOCKS names a block the docs no longer have: {fmt(key)}"
        assert len(named) == 1, f"{fmt(key)} names several blocks, make it longer: {named}"
    docs = "".join(doc.read_text() for doc in DOCS)
    for key, kind in BLOCKS.items():
        if isinstance(kind, Script):
            assert kind.stdout in BY_KEY[key].code, f"{fmt(key)} no longer shows {kind.stdout!r}"
        if isinstance(kind, Shell):
            for text in kind.stdout.values():
                assert text in docs, f"the docs no longer show {text!r} ({fmt(key)})"
        if isinstance(kind, RunWith):
            assert kind.key in BLOCKS, fmt(key)
            assert not isinstance(BLOCKS[kind.key], NotRun | RunWith), fmt(key)


def test_file_blocks_parse() -> None:
    names = []
    for key in keys_of(File):
        code = BY_KEY[key].code
        match = FILE_NAME.match(first_line(code))
        assert match, f"{fmt(key)}: a File block's first line is '# NAME.py' or '# NAME.toml'"
        names.append(match.group(1))
        if match.group(1).endswith(".toml"):
            tomllib.loads(code)
        else:
            compile(code, match.group(1), "exec")
    assert len(set(names)) == len(names), f"two File blocks write the same file: {names}"


@pytest.mark.parametrize("key", keys_of(Shell), ids=fmt)
def test_shell_block(session: Session, key: Key) -> None:
    kind = BLOCKS[key]
    assert isinstance(kind, Shell)
    for before in kind.before:
        earlier = BLOCKS[before]
        session.run_block(BY_KEY[before], earlier if isinstance(earlier, Shell) else Shell())
    session.run_block(BY_KEY[key], kind)
    session.stop(kind.counters)
    for check in kind.files:
        if check.needs and not _available(check.needs):
            continue  # its line was left out, and the reason recorded
        path = Path(session.localize(check.path))
        path = path if path.is_absolute() else session.root / path
        assert path.exists(), f"{fmt(key)}: {check.path} was not written"
        assert check.text in path.read_text(errors="replace"), f"{check.path}: no {check.text!r}"


@pytest.mark.parametrize("key", keys_of(Script), ids=fmt)
def test_python_snippet(session: Session, key: Key) -> None:
    kind = BLOCKS[key]
    assert isinstance(kind, Script)
    if kind.handler is not None:
        _write_handler(session, kind.handler)
    for line, in_checkout in kind.servers:
        session.run_line(line, in_checkout=in_checkout)
    script = session.write(BY_KEY[key], name="snippet.py")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=session.root,
        env=session.env,
        capture_output=True,
        text=True,
        timeout=LINE_TIMEOUT,
    )
    assert done.returncode == 0, f"{fmt(key)} exited {done.returncode}:\n{done.stderr}"
    assert kind.stdout in done.stdout, f"{fmt(key)} printed {done.stdout!r}"
    session.stop()


@pytest.mark.parametrize("key", keys_of(Handler), ids=fmt)
def test_handler_fragment(session: Session, key: Key) -> None:
    kind = BLOCKS[key]
    assert isinstance(kind, Handler)
    _write_handler(session, key)
    session.run_line(kind.serve)
    session.run_line(kind.send)
    session.stop()


def test_readme_test_function_passes_under_pytest(session: Session) -> None:
    (key,) = keys_of(Pytest)
    session.write(BY_KEY[key], name="test_app.py")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=session.root,
        env=session.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{fmt(key)}:\n{done.stdout}\n{done.stderr}"
    assert "1 passed" in done.stdout, done.stdout


def test_embedding_script_serves_and_stops(session: Session) -> None:
    """README's serve.py (a File block) serves app:handle and stops cleanly on SIGTERM."""
    socket_path = session.localize("/tmp/app.sock")
    session.start_server(["python", "serve.py"], session.root, {}, "python serve.py", socket_path)
    session.run_line('ugram send /tmp/app.sock \'{"name": "cpu", "value": 0.5}\'')
    session.stop()


@pytest.mark.parametrize(
    "heading",
    sorted({key[1] for key in keys_of(Systemd)}),
)
def test_systemd_units_verify(session: Session, heading: str) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    units = []
    for key in keys_of(Systemd):
        if key[1] == heading:
            name = re.fullmatch(r"# /etc/systemd/system/([\w.@-]+)", first_line(BY_KEY[key].code))
            assert name, f"{fmt(key)}: a unit's first line is '# /etc/systemd/system/NAME'"
            units.append(session.write(BY_KEY[key], name=name.group(1)))
    done = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=LINE_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def _write_handler(session: Session, key: Key) -> None:
    (session.root / "doc_handler.py").write_text(
        HANDLER_PRELUDE + session.localize(BY_KEY[key].code)
    )
