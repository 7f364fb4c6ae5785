"""Imported first by every job script: a ``python`` without rayseg's dependencies (the system one, under
``ray job submit``) gets one line saying which interpreter to use instead of an ImportError traceback."""
import sys

try:
    import ray, torch, yaml  # noqa: E401,F401
except ModuleNotFoundError as missing:
    print(f"error: {sys.executable} has no module {missing.name!r}: run the job with the Python rayseg is installed "
          f"in; under `ray job submit` name it in the entrypoint, e.g. \"$PWD/.venv/bin/python\" jobs/... "
          f"(docs/cluster.md)", file=sys.stderr)
    sys.exit(2)
