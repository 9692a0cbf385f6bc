"""A benchmark system in a worker process of its own, timed inside the worker.

Benchmarked systems disturb one another in one process: there CTranslate2 decoded at
half its speed and PyTorch 10-33% slower (session 28, ``bench_process_isolation.py``),
because CTranslate2's OpenMP calls bind to torch's copy of GNU OpenMP when torch is imported
first and the shared runtime then throttles its spin-waits (session 29,
``bench_openmp_runtimes.py``). So ``bench_vs_peers.py`` and ``bench_train.py --torch``
build every timed system in a spawned process (no fork of a process holding XLA's
threads) and take the time of each call inside it; the pipe's transfer is not counted.

``Local`` gives an object in this process the same interface (``--same-process``).

The worker imports ``module`` (one of the ``experiments/`` scripts, found through the
parent's ``sys.path``, which spawn passes on) and builds ``cls_name(*args, **kwargs)``; the
class must be listed in that module's ``WORKER_CLASSES``.
"""

from __future__ import annotations

import importlib
import time
from typing import Any


def _serve(conn: Any, module: str, cls_name: str, args: tuple, kwargs: dict) -> None:
    try:
        mod = importlib.import_module(module)
        if cls_name not in getattr(mod, "WORKER_CLASSES", ()):
            raise ValueError(f"unknown runner {cls_name} (not in {module}.WORKER_CLASSES)")
        obj = getattr(mod, cls_name)(*args, **kwargs)
    except Exception as e:  # the parent raises it, naming the class
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", getattr(obj, "name", cls_name)))
    while (msg := conn.recv()) is not None:
        kind, name, call_args = msg
        try:
            if kind == "attr":
                conn.send(("ok", getattr(obj, name, None), 0.0))
                continue
            t0 = time.perf_counter()
            out = getattr(obj, name)(*call_args)
            conn.send(("ok", out, time.perf_counter() - t0))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}", 0.0))


class Worker:
    """``cls_name(*args, **kwargs)`` from ``module``, living in a spawned process.

    ``call(method, *args)`` runs ``obj.method(*args)`` there and returns its result (which
    must pickle); ``last_s`` is that call's time measured in the worker. ``attr(name)``
    reads an attribute. ``close()`` ends the process.
    """

    def __init__(self, module: str, cls_name: str, *args: Any, **kwargs: Any) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, args=(child, module, cls_name, args, kwargs), daemon=True
        )
        self._proc.start()
        child.close()
        try:
            status, name = self._conn.recv()
        except EOFError:  # the process died before it could answer (a crash on import)
            self._proc.join(timeout=30)
            status, name = "error", f"the process exited with code {self._proc.exitcode}"
        if status != "ready":
            self._proc.join(timeout=30)
            raise RuntimeError(f"{cls_name} worker failed to start: {name}")
        self.name: str = name
        self.last_s = 0.0

    def _ask(self, kind: str, name: str, args: tuple) -> Any:
        try:
            self._conn.send((kind, name, args))
            status, out, secs = self._conn.recv()
        except (EOFError, OSError):  # the worker is gone (out of memory, a signal)
            self._proc.join(timeout=30)
            raise RuntimeError(
                f"{self.name}.{name}: the worker exited with code {self._proc.exitcode}"
            ) from None
        if status != "ok":
            raise RuntimeError(f"{self.name}.{name}: {out}")
        if kind == "call":
            self.last_s = secs
        return out

    def call(self, method: str, *args: Any) -> Any:
        return self._ask("call", method, args)

    def attr(self, name: str) -> Any:
        return self._ask("attr", name, ())

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()


class Local:
    """``Worker``'s interface for an object in this process (the arrangement before session
    28, kept for comparison): ``call`` times the method here."""

    def __init__(self, obj: Any) -> None:
        self.obj, self.name = obj, getattr(obj, "name", type(obj).__name__)
        self.last_s = 0.0

    def call(self, method: str, *args: Any) -> Any:
        fn = getattr(self.obj, method)
        t0 = time.perf_counter()
        out = fn(*args)
        self.last_s = time.perf_counter() - t0
        return out

    def attr(self, name: str) -> Any:
        return getattr(self.obj, name, None)

    def close(self) -> None:
        pass
