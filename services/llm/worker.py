"""One object in a child process: native code that crashes takes the child down, never the service.

llama.cpp is C++: a fault in it (a bad instruction for this CPU, a bug in a buffer type: llama-cpp-python
0.3.36 built for the build machine's AMX died with SIGSEGV in ``llama_decode``) kills whatever process it runs
in. So the llm service keeps the model in a child process (`ChildObject`) and talks to it over a pipe: a
crash there is an exception here (`ChildDied`, with the signal), the service answers 503 and starts a new
child, and a test that made it crash fails with the signal's name instead of ending the test run.

The child is a fresh interpreter (``python -m services.llm.worker <fd>``: ``fork`` of a process with threads
can deadlock, and multiprocessing's ``spawn`` would run the parent's ``__main__`` again, which breaks a
script or a REPL that starts the engine). Parent and child talk over a socket pair, with multiprocessing's
`Connection` framing; the child receives ``factory``, ``args`` and the callable ``methods`` first, builds its
object with ``factory(*args)`` and runs its ``load()``. Then the parent calls
methods by name: ``call`` returns a value, ``iterate`` streams the items of a generator method. Only the
names given as ``methods`` can be called. Values and exceptions travel pickled; an exception that does not
pickle arrives as `EngineFailedError` with its text.

The child ends when the parent closes the pipe (or dies: the pipe then reads as closed), so no child
outlives its service; it ignores SIGINT and SIGTERM, which a terminal or a process manager sends to the whole
process group, so that only its parent decides when it ends.
"""

from __future__ import annotations

import logging
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from services.common.errors import EngineFailedError

log = logging.getLogger(__name__)

_CANCEL = ("cancel",)


class ChildDied(Exception):
    """The child process ended while the parent waited on it (a crash, or killed)."""

    def __init__(self, pid: int | None, exitcode: int | None) -> None:
        self.pid = pid
        self.exitcode = exitcode
        super().__init__(f"process {pid} {describe_exit(exitcode)}")


def describe_exit(exitcode: int | None) -> str:
    """``died with SIGSEGV`` / ``exited with status 3`` / ``is gone`` (exit code not known)."""
    if exitcode is None:
        return "is gone"
    if exitcode < 0:
        try:
            return f"died with {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"died with signal {-exitcode}"
    return f"exited with status {exitcode}"


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else an `EngineFailedError` with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return EngineFailedError(f"{type(exc).__name__}: {exc}")


def _serve(conn: Connection) -> None:
    """The child's main loop."""
    # Ctrl-C and a fleet's SIGTERM reach the whole process group; the child ends with its parent instead (the
    # parent closes the pipe on shutdown, and a dead parent's pipe reads as closed), so that a stopping service
    # never sees its llama.cpp "crash" and restart it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        factory, args, methods, setup = conn.recv()
    except (EOFError, OSError):
        return
    if setup is not None:
        setup()
    try:
        obj = factory(*args)
        info = obj.load()
    except BaseException as exc:
        conn.send(("err", _portable(exc)))
        return
    conn.send(("ok", info))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        if msg == _CANCEL:  # a cancel that crossed the end of its iteration
            continue
        kind, name, call_args = msg
        if name not in methods:
            conn.send(("err", EngineFailedError(f"{name!r} cannot be called in the child")))
            continue
        try:
            if kind == "call":
                conn.send(("ok", getattr(obj, name)(*call_args)))
                continue
            gen = getattr(obj, name)(*call_args)
            for item in gen:
                conn.send(("item", item))
                if conn.poll() and conn.recv() == _CANCEL:
                    gen.close()
                    break
            conn.send(("end", None))
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception as exc:
            conn.send(("err", _portable(exc)))


class ChildObject:
    """Parent's handle on an object living in a child process. One caller at a time (a lock serialises
    calls; the llm engine makes one call at a time anyway)."""

    def __init__(self, factory: Callable[..., Any], *args: Any, methods: frozenset[str],
                 setup: Callable[[], None] | None = None) -> None:
        self._factory = factory
        self._args = args
        self._methods = methods
        self._setup = setup
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self) -> int | None:
        """BLOCKING: until the child process ends, however it ends; its exit code."""
        return self._proc.wait() if self._proc is not None else None

    def start(self) -> Any:
        """BLOCKING: start the child, build and load its object; returns what ``load()`` returned. Raises
        what the load raised, or `ChildDied`."""
        parent, child = socket.socketpair()
        with child:
            proc = subprocess.Popen([sys.executable, "-m", __name__, str(child.fileno())], pass_fds=(child.fileno(),))
        self._proc, self._conn = proc, Connection(parent.detach())
        with self._lock:
            self._send((self._factory, self._args, self._methods, self._setup))
            kind, value = self._recv()
        if kind == "err":
            self.stop()
            raise value
        return value

    def _ended(self) -> ChildDied:
        """The pipe broke: the child is ending (or ended); its exit code (killed if it lingers)."""
        proc = self._proc
        assert proc is not None
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        return ChildDied(proc.pid, code)

    def _recv(self) -> tuple[str, Any]:
        conn, proc = self._conn, self._proc
        if conn is None or proc is None:
            raise ChildDied(None, None)
        try:
            return conn.recv()
        except (EOFError, OSError):
            raise self._ended() from None

    def _send(self, msg: Any) -> None:
        conn, proc = self._conn, self._proc
        if conn is None or proc is None:
            raise ChildDied(None, None)
        try:
            conn.send(msg)
        except OSError:  # BrokenPipeError, ConnectionResetError, a closed connection
            raise self._ended() from None

    def call(self, name: str, *args: Any) -> Any:
        """BLOCKING: ``obj.name(*args)`` in the child."""
        with self._lock:
            self._send(("call", name, args))
            kind, value = self._recv()
        if kind == "err":
            raise value
        return value

    def iterate(self, name: str, *args: Any) -> Iterator[Any]:
        """BLOCKING generator: the items of ``obj.name(*args)``. Closing it early cancels the child's
        generator at its next item."""
        with self._lock:
            self._send(("iter", name, args))
            finished = False
            try:
                while True:
                    kind, value = self._recv()
                    if kind == "item":
                        yield value
                    elif kind == "end":
                        finished = True
                        return
                    else:
                        finished = True
                        raise value
            finally:
                if not finished and self.alive():  # closed early: cancel, then drain to the end marker
                    try:
                        self._send(_CANCEL)
                        while self._recv()[0] == "item":
                            pass
                    except ChildDied:
                        pass

    def stop(self, timeout: float = 5.0) -> None:
        """Close the pipe (the child's loop ends), then make sure the process is gone."""
        conn, proc = self._conn, self._proc
        self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)


if __name__ == "__main__":  # the child: python -m services.llm.worker <fd of its end of the socket pair>
    _serve(Connection(int(sys.argv[1])))
