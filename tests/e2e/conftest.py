"""Fixtures for the end-to-end suite.

Each test gets its own work directory, its own embedded broker (so topics and
consumer groups never leak between tests), its own database in the session's
throwaway PostgreSQL cluster (migrated with hookbridge-migrate), and a process
group that stops everything it started when the test ends, pass or fail. The
logs of a failed test's processes are printed with the failure.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from hbtest.pg import db_url, pg_cluster  # noqa: E402,F401
from hbtest.procs import ProcessGroup  # noqa: E402
from hbtest.stack import Broker  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    group = getattr(item, "_hb_procs", None)
    if rep.when == "call" and rep.failed and group is not None:
        rep.sections.append(("hookbridge processes", group.dump()))


@pytest.fixture
def workdir(tmp_path):
    os.chmod(tmp_path, 0o755)
    return tmp_path


@pytest.fixture
def procs(request, workdir):
    group = ProcessGroup(workdir)
    request.node._hb_procs = group
    yield group
    group.stop_all()
    # Under ASan/UBSan (make test-asan) a report in any process fails the test.
    for p in group.procs:
        out = p.output()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            assert marker not in out, f"{p.name}: sanitizer report\n{out[-8000:]}"


@pytest.fixture
def broker(procs, workdir):
    return Broker(procs, workdir)
