"""Stopping a run on Ctrl-C (SIGINT) or SIGTERM (``kill``, ``ray job stop``): workers down, run marked KILLED.

Left to themselves, Ray Train's own SIGINT handler aborts the workers and then ends the process with an exit
status that depends on how the controller died (0 or 1), and SIGTERM hits Ray's handler, whose ``sys.exit``
inside a blocked ``ray.get`` ends in a C++ abort (status 134 and a stack dump). Here both signals abort the
worker group through Ray Train's controller and then raise ``RunInterrupted`` in the driver's main thread, so
``train`` can mark the MLflow run KILLED and the job script can exit 130 / 143 with a line saying how to resume.
A second signal while the workers are being stopped exits at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Dict, Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
ABORT_TIMEOUT_S = 60.0  # how long the first signal waits for the workers to be torn down


class RunInterrupted(BaseException):
    """A run stopped by a signal. A ``BaseException`` (as ``KeyboardInterrupt``) so that no ``except
    Exception`` on the way up swallows it. ``iteration``/``checkpoint_iteration``/``work_dir`` say where the
    run stood (filled in by ``train``)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)
        self.iteration: Optional[int] = None
        self.checkpoint_iteration: Optional[int] = None
        self.max_iters: Optional[int] = None
        self.work_dir: Optional[str] = None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (130, 143)."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"stopped by {self.signal_name}"


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupted(signum, frame) -> None:
    raise RunInterrupted(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While inside: SIGINT and SIGTERM raise ``RunInterrupted`` in the main thread (a no-op elsewhere, e.g.
    in a Tune trial's thread, where Tune owns the signals). The previous handlers come back on exit."""
    if not _in_main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_interrupted)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _abort_on_signal(controller, stop: Dict[str, int], on_stop: Optional[Callable[[], None]]) -> None:
    """Install handlers that record the signal in ``stop``, call ``on_stop`` and abort Ray Train's ``controller``
    (workers and their data actors torn down); a second signal exits at once.

    The handler does not raise: it runs inside the driver's blocking ``ray.get`` on the controller, where an
    exception from a signal handler turns into a ``SystemError``. The abort ends the controller, that
    ``ray.get`` fails, and ``fit`` turns the failure into ``RunInterrupted``. ``on_stop`` runs first because
    ``ray job stop`` follows its SIGTERM with SIGKILL after a few seconds: what must be recorded (the MLflow
    run's KILLED status) goes before the slower teardown.
    """
    import ray

    def handler(signum, frame) -> None:
        name = signal.Signals(signum).name
        if stop:
            print(f"\n{name} again: exiting without waiting for the workers", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        stop["signum"] = signum
        print(f"\n{name}: stopping the training workers ...", file=sys.stderr, flush=True)
        if on_stop is not None:
            try:
                on_stop()
            except Exception:
                pass  # best effort: the caller records the stop again once RunInterrupted reaches it
        try:
            ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
        except Exception:
            pass  # abort() ends by exiting the controller actor, so an actor error is the normal outcome

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def interruptible(trainer_cls, on_stop: Optional[Callable[[], None]] = None):
    """A subclass of the Ray Train trainer ``trainer_cls`` that a SIGINT or SIGTERM stops cleanly: ``fit``
    aborts the workers and raises ``RunInterrupted`` (see ``_abort_on_signal``).

    Ray Train registers its SIGINT handler in ``_register_sigint_handler(controller)`` (main thread only);
    overriding that hook is the one place that has the controller handle. The handlers that were there
    before ``fit`` come back after it.
    """

    class InterruptibleTrainer(trainer_cls):
        def fit(self):
            self._rayseg_stop: Dict[str, int] = {}
            saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if _in_main_thread() else {}
            try:
                return super().fit()
            except BaseException:
                if self._rayseg_stop:
                    raise RunInterrupted(self._rayseg_stop["signum"]) from None
                raise
            finally:
                for sig, handler in saved.items():
                    signal.signal(sig, handler)

        def _register_sigint_handler(self, controller) -> None:
            _abort_on_signal(controller, self._rayseg_stop, on_stop)

    InterruptibleTrainer.__name__ = InterruptibleTrainer.__qualname__ = f"Interruptible{trainer_cls.__name__}"
    return InterruptibleTrainer
