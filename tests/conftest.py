"""Each pytest-xdist worker (`make test` runs two or more) sets up its local deployments
on ports of its own: a port is checked free before its service binds it, so two workers
drawing from one range could both hand it out (deploy/local.py, `free_port`)."""

from __future__ import annotations

import os

from backupvault.deploy.local import DEFAULT_PORTS, PORTS_ENV

_worker = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... under xdist
if _worker and PORTS_ENV not in os.environ:
    _count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _span = len(DEFAULT_PORTS) // _count
    _first = DEFAULT_PORTS.start + int(_worker.removeprefix("gw")) * _span
    os.environ[PORTS_ENV] = f"{_first}-{_first + _span - 1}"
