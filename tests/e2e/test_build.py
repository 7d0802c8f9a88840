"""The build (issue 2, item 1): `make` a second time has nothing to do."""
import shutil
import subprocess

import pytest

from hbtest.procs import REPO, SLOW


@pytest.mark.no_programs  # builds with the plain flags in either pass
def test_a_second_make_rebuilds_nothing(tmp_path):
    """A unit test program is built, then `make -q` (is anything out of date?)
    answers 0. It used to answer 1: make deleted the test's object file as an
    intermediate, so every `make` (and so every `make run`) compiled and linked
    the unit tests again."""
    if not shutil.which("make"):
        raise AssertionError("make is not installed")
    args = ["make", "--no-print-directory", "-C", str(REPO), f"B={tmp_path}/build",
            f"BIN={tmp_path}/bin", "OPT=-O0", f"{tmp_path}/build/tests/test_sign"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300 * SLOW)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "build/tests/unit/test_sign.o").exists(), "the object file was deleted"
    q = subprocess.run(args[:1] + ["-q"] + args[1:], capture_output=True, text=True,
                       timeout=60 * SLOW)
    assert q.returncode == 0, "make would rebuild: " + q.stdout + q.stderr
