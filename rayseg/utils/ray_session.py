"""Connecting to Ray and keeping its console output readable; shared by training, evaluation and prediction."""
from __future__ import annotations

import logging
import math
import os
import re
from typing import Optional, Tuple, Type

from rayseg.errors import CheckpointError, ConfigError, DataError

USER_ERRORS: Tuple[Type[BaseException], ...] = (ConfigError, DataError, CheckpointError)


# Where Ray's job agent unpacks ``ray job submit --working-dir``: a temporary copy, deleted with the session.
_JOB_PACKAGE = re.compile(r"^(?P<pkg>.*/runtime_resources/working_dir_files/_ray_pkg_[0-9a-f]+)(/|$)")

AUTH_HELP = ("export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the head's token> (`ray get-auth-token` on the "
             "head prints it; a head started on this machine keeps it in ~/.ray/auth_token, and then "
             "RAY_AUTH_MODE=token alone is enough)")


def job_package_dir(cwd: Optional[str] = None) -> Optional[str]:
    """The temporary folder Ray unpacked ``ray job submit --working-dir`` into, if this process runs there.

    A job's entrypoint starts in that copy (``…/runtime_resources/working_dir_files/_ray_pkg_<hash>``):
    it holds only what was uploaded (``.rayignore`` leaves ``data/`` and ``work_dirs/`` out) and is
    deleted with the Ray session, so relative inputs are missing there and relative outputs would vanish.
    """
    found = _JOB_PACKAGE.match(os.path.realpath(cwd or os.getcwd()))
    return found.group("pkg") if found else None


def _probe_gcs(address: str) -> None:
    """Open and close a GCS client: raises ``AuthenticationError`` within milliseconds if the cluster wants a
    token this process does not send (``ray.init`` would instead retry for ~20 s, printing a line each time).
    The C++ client logs one warning line per refusal on fd 2; it is dropped here, the caller explains."""
    import tempfile

    import ray._raylet

    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                ray._raylet.GcsClient(address=address)
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _enable_token_auth() -> None:
    """Switch this process (and the Ray processes it starts) to token mode, as Ray does for ``address="auto"``:
    the env var for children, then a reload of the config Ray already cached from the environment."""
    import ray._raylet

    os.environ["RAY_AUTH_MODE"] = "token"
    ray._raylet.Config.initialize("")
    ray._raylet.AuthenticationTokenLoader.instance().reset_cache()


def _check_reachable(address: str) -> None:
    """A closed port fails in a second with a line saying so; ``ray.init`` would wait ~40 s to say less."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: let Ray interpret it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except ConnectionRefusedError:
        raise ConfigError(f"no Ray cluster answers at {address} (connection refused): start one with "
                          f"`ray start --head`, or fix --address / RAY_ADDRESS") from None
    except OSError:
        return  # a timeout or a name that resolves slowly: Ray's own retries may still get through


def prepare_cluster_auth(address: str) -> None:
    """Make connecting to the existing cluster at ``address`` (GCS ``host:port``) just work with token auth.

    ``ray start --head`` turns on token authentication when a token exists (``~/.ray/auth_token``, written by
    any earlier local ``ray.init()``). Ray enables the client side by itself only for ``address="auto"``; with
    an explicit address (``--address``, ``RAY_ADDRESS``) a client without ``RAY_AUTH_MODE=token`` is refused.
    So: if the cluster refuses this process and a token is available (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), switch to token mode; if there is none, or the cluster
    refuses the token too, raise ``ConfigError`` saying exactly what to set. Under ``ray job submit`` the job
    already runs with ``RAY_AUTH_MODE=token`` and the head's token, and the probe passes.
    """
    import ray._raylet
    from ray.exceptions import AuthenticationError

    if address in ("auto", "local") or "://" in address:
        return  # Ray's own discovery (auto enables the token itself), a new instance, or Ray Client
    _check_reachable(address)
    try:
        _probe_gcs(address)
        return
    except AuthenticationError:
        pass
    except Exception:
        return  # not an authentication problem: ray.init reports it
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    has_token = ray._raylet.AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
    if mode != "token" and has_token and mode != "disabled":
        _enable_token_auth()
        try:
            _probe_gcs(address)
            return
        except AuthenticationError:
            raise ConfigError(f"the Ray cluster at {address} uses token authentication and refused this "
                              f"machine's token (~/.ray/auth_token or RAY_AUTH_TOKEN[_PATH]): "
                              f"{AUTH_HELP}") from None
        except Exception:
            return
    if mode == "token" and has_token:
        raise ConfigError(f"the Ray cluster at {address} refused the token in RAY_AUTH_TOKEN / "
                          f"RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token: {AUTH_HELP}")
    raise ConfigError(f"the Ray cluster at {address} uses token authentication and no token was found"
                      f"{' (RAY_AUTH_MODE=disabled is set)' if mode == 'disabled' else ''}: {AUTH_HELP}")


def connect_ray(address: Optional[str] = None, num_cpus_needed: float = 1.0, dashboard: bool = False) -> None:
    """Connect to ``address``/``RAY_ADDRESS``, or start a local Ray with enough logical CPUs for the job.

    ``address="local"`` for the local case: a cluster somebody started with ``ray start`` on this machine
    is not ours to join (plain ``ray.init()`` would attach to it and then refuse ``num_cpus``).
    ``dashboard`` starts the dashboard locally; Ray Train's placement-group cleaner polls its state API.
    A cluster with token authentication is joined with the token found on this machine, or refused with
    a ``ConfigError`` saying what to set (``prepare_cluster_auth``).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        prepare_cluster_auth(address)
        gcs = address if re.fullmatch(r"[\w.\-\[\]:]+:\d+", address) else None
        ray.init(address=address, runtime_env=job_runtime_env(gcs_address=gcs))
        return
    num_cpus = max(os.cpu_count() or 1, math.ceil(num_cpus_needed) + 1)
    if dashboard:
        port = _free_port()
        ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", dashboard_port=port,
                 runtime_env=job_runtime_env(api_server=f"http://127.0.0.1:{port}"))
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=job_runtime_env())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_runtime_env(api_server: Optional[str] = None, gcs_address: Optional[str] = None) -> dict:
    """The runtime environment of rayseg's Ray job: every worker and actor it starts gets it.

    - Which cluster the job's own processes query. Ray Train's placement-group cleaner (a detached actor)
      asks the state API whether the train controller is alive, and the state API finds its cluster through
      ``RAY_API_SERVER_ADDRESS``/``RAY_ADDRESS``, else through ``/tmp/ray/ray_current_cluster``: the cluster
      started *last* on the machine. With another Ray instance on the machine it asked that one, printed a
      30-line traceback, or found our live controller "dead" and removed our placement group. Naming our
      cluster here makes it ask the right one.
    - Quiet logs in every process (``quiet_ray_process``), unless ``RAYSEG_VERBOSE`` is set.
    - The config's ``custom_imports``, once the driver has imported them (``rayseg.custom_imports``): every
      process imports them at start-up, so the parts they register, and objects pickled by reference to them,
      are known in every worker and actor.
    """
    from rayseg.custom_imports import runtime_env_vars

    env = dict(runtime_env_vars())
    if api_server:
        env["RAY_API_SERVER_ADDRESS"] = api_server
    elif gcs_address:
        env["RAY_ADDRESS"] = gcs_address
    if os.environ.get("RAYSEG_VERBOSE"):
        env["RAYSEG_VERBOSE"] = os.environ["RAYSEG_VERBOSE"]
    runtime_env: dict = {"worker_process_setup_hook": "rayseg.utils.ray_session.quiet_ray_process"}
    if env:
        runtime_env["env_vars"] = env
    return runtime_env


def quiet_ray_process() -> None:
    """Run in every Ray worker process rayseg's job starts (its ``worker_process_setup_hook``): import the
    config's ``custom_imports`` (``rayseg.custom_imports.import_from_environment``); quiet Ray Data's start-up
    lines, progress bars and "execution finished" lines, which are for debugging (``RAYSEG_VERBOSE=1`` keeps
    them)."""
    from rayseg.custom_imports import import_from_environment

    import_from_environment()
    if os.environ.get("RAYSEG_VERBOSE"):
        return
    quiet_ray_data()


def quiet_ray_data(context=None) -> None:
    """Ray Data's per-operator progress bars and start-up lines would drown rayseg's own progress line.

    ``context``: the ``DataContext`` to change (default: this process's current one).
    """
    import ray.data

    ctx = context or ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


_RAY_RETRY_SUFFIX = re.compile(r"\nFailed to .* after \d+/\d+ attempts \(total backoff")


def _find_user_error(exc: Optional[BaseException]) -> Optional[BaseException]:
    """The first rayseg error in ``exc``'s chain: Ray keeps a remote error on ``RayTaskError.cause``, Ray
    Train keeps each worker's in ``WorkerGroupError.worker_failures`` and the controller's in
    ``ControllerError.controller_failure``; Python chains the rest with ``__cause__``/``__context__``."""
    seen = set()
    pending = [exc]
    while pending:
        exc = pending.pop(0)
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, USER_ERRORS):
            return exc
        pending.extend(list((getattr(exc, "worker_failures", None) or {}).values()))
        pending.extend([getattr(exc, "controller_failure", None), getattr(exc, "cause", None),
                        exc.__cause__, exc.__context__])
    return None


def user_error(exc: Optional[BaseException]) -> Optional[BaseException]:
    """The rayseg error (ConfigError/DataError/CheckpointError) behind an exception Ray wrapped, as a plain
    instance of its own class whose text is the message naming the file, key or value; None if there is none.

    Ray re-raises a remote error as a subclass of both ``RayTaskError`` and the error's class, whose text is
    the whole remote traceback, and Ray Data appends its retry advice ("… if you believe this to be
    transient") to the message; neither is what the user needs to read.
    """
    found = _find_user_error(exc)
    while found is not None and isinstance(getattr(found, "cause", None), USER_ERRORS):
        found = found.cause
    if found is None or not found.args or not isinstance(found.args[0], str):
        return found
    message = _RAY_RETRY_SUFFIX.split(found.args[0], maxsplit=1)[0]
    return type(found)(message, *found.args[1:])
