"""The Python API in-process: Supervisor lifecycle, state properties and golib-shaped callbacks."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from pathlib import Path

import pytest

from tests.conftest import read_records, send_async, teardowns, until
from ugram import ConnState, Supervisor, make_config
from ugram.errors import HandlerError


async def finish(sup: Supervisor, task: asyncio.Task[int]) -> None:
    """Cleanup whatever happened: kill the children, let serve() return."""
    sup.close()
    await asyncio.wait_for(task, 30)


def error_count(errors: list[BaseException]) -> int:
    """Total of the ``N handler error(s)`` reports passed to on_error."""
    found = (re.match(r"(\d+) handler error", str(e)) for e in errors)
    return sum(int(m.group(1)) for m in found if m)


@pytest.mark.asyncio
async def test_serve_send_shutdown_lifecycle(sock_dir: Path, apps_env: Path) -> None:
    path = sock_dir / "api.sock"
    sup = Supervisor(make_config(socket=str(path), handler="seqrec:Recorder", workers=2))
    assert (sup.is_running, sup.is_gone, sup.open_connections) == (False, False, 0)
    with pytest.raises(RuntimeError):
        sup.statistics()

    task = asyncio.create_task(sup.serve())
    try:
        await until(lambda: sup.is_running or task.done(), what="serving")
        assert sup.is_running, task.exception() if task.done() else None
        assert not sup.is_gone
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert sup.socket_path == str(path)

        sent = [f"api:{i}".encode() for i in range(200)]
        await send_async(path, *sent)
        await until(lambda: sup.statistics().handled == 200, what="200 handled")
        assert sup.open_connections == 0

        shutting = asyncio.create_task(sup.shutdown(timeout=10))
        await until(lambda: sup.is_gone, what="is_gone")
        assert not sup.is_running
        assert not path.exists()  # no new senders once shutdown has begun
        assert await shutting == 0
        assert await asyncio.wait_for(task, 10) == 0
    finally:
        await finish(sup, task)

    assert (sup.is_running, sup.is_gone, sup.open_connections) == (False, True, 0)
    assert sup.exit_code == 0
    assert sorted(read_records(apps_env)) == sorted(p.decode() for p in sent)
    assert teardowns(apps_env) == 2
    stats = sup.statistics()  # still readable after the stop: the final totals
    assert (stats.received, stats.handled, stats.rejected) == (200, 200, 0)


@pytest.mark.asyncio
async def test_callbacks_report_lifecycle_workers_and_handler_errors(
    sock_dir: Path, apps_env: Path
) -> None:
    path = sock_dir / "api.sock"
    sup = Supervisor(make_config(socket=str(path), handler="seqrec:raise_every_tenth", workers=2))
    messages: list[str] = []
    infos: list[tuple[str, str, ConnState]] = []
    errors: list[BaseException] = []
    sup.on_server_info(messages.append)
    sup.on_info(lambda local, remote, state: infos.append((local, remote, state)))
    sup.on_error(lambda *errs: errors.extend(errs))

    task = asyncio.create_task(sup.serve())
    try:
        # "listening on" comes once every worker has booted (imported the handler).
        await until(lambda: bool(messages) or task.done(), what="listening")
        started = {(r, s) for _, r, s in infos}
        assert started >= {
            ("worker 0", ConnState.WORKER_STARTED),
            ("worker 1", ConnState.WORKER_STARTED),
            ("receiver", ConnState.RECEIVER_STARTED),
        }
        assert messages[0].startswith(f"listening on {path}")
        assert not errors

        await send_async(path, *(str(i).encode() for i in range(1, 31)))
        await until(lambda: error_count(errors) >= 3, what="3 handler errors reported")
        assert await sup.shutdown() == 0
    finally:
        await finish(sup, task)

    assert all(isinstance(e, HandlerError) for e in errors), errors
    assert error_count(errors) == 3
    assert {local for local, _, _ in infos} == {str(path)}
    states = [s for _, _, s in infos]
    assert states.count(ConnState.WORKER_STARTED) == 2  # no worker died and was restarted
    assert states.count(ConnState.WORKER_STOPPED) == 2
    assert states.count(ConnState.RECEIVER_STOPPED) == 1
    assert ConnState.DATAGRAMS_READ in states
    assert messages[-1].startswith("stopped: received=30 handled=30 "), messages
    assert "handler_errors=3" in messages[-1]


@pytest.mark.asyncio
async def test_raising_callbacks_do_not_break_the_server(
    sock_dir: Path, apps_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*args: object) -> None:
        raise RuntimeError("callback bug")

    path = sock_dir / "api.sock"
    sup = Supervisor(make_config(socket=str(path), handler="seqrec:raise_every_tenth", workers=1))
    sup.on_server_info(explode)
    sup.on_info(explode)
    sup.on_error(explode)
    messages: list[str] = []
    errors: list[BaseException] = []
    sup.on_server_info(messages.append)  # registered after a raising one: still called
    sup.on_error(lambda *errs: errors.extend(errs))

    task = asyncio.create_task(sup.serve())
    try:
        await until(lambda: bool(messages) or task.done(), what="listening")
        assert sup.is_running, task.exception() if task.done() else None
        await send_async(path, *(str(i).encode() for i in range(1, 21)))
        await until(lambda: sup.statistics().handled == 20, what="20 handled")
        await until(lambda: error_count(errors) == 2, what="2 handler errors reported")
        assert await sup.shutdown() == 0
    finally:
        await finish(sup, task)

    assert sup.statistics().handled == 20
    assert messages[0].startswith("listening on")
    assert messages[-1].startswith("stopped: received=20 handled=20 ")
    assert "callback bug" in caplog.text  # the broken callback is reported, not hidden
