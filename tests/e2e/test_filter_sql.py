"""Subscription content filters: the SQL validator (hookbridge.filter_problem,
hookbridge.check_filter in sql/30_filters.sql) and the dispatcher's C
compiler (lib/hb_filter.c) must agree on which filters are valid, so a filter
that register() accepts never fails at delivery time, and one it refuses
would not have worked.

Both run against tests/filter_cases.json, the table the C unit test also
checks; the C side here is the real lib/hb_filter.c, built into a small
shared library and called through ctypes, so the same input goes to both.
A seeded random generator then throws a few hundred more filters (valid and
broken in assorted ways) at both and compares the verdicts."""
import ctypes
import json
import random
import shutil
import subprocess

import psycopg2
import pytest

from hbtest.pg import REPO

CASES = json.loads((REPO / "tests" / "filter_cases.json").read_text(encoding="utf-8"))
VALID = CASES["valid"]
INVALID = CASES["invalid"]

# PostgreSQL and lib/hb_filter.c built here without sanitizers: the sanitizer
# pass skips these (conftest.py); the C filter's own tests run under it.
pytestmark = pytest.mark.sql_only


class CFilter:
    """lib/hb_filter.c through ctypes: problem(spec) -> None or the message."""

    def __init__(self, so_path):
        self.lib = ctypes.CDLL(str(so_path))
        self.lib.json_loads.restype = ctypes.c_void_p
        self.lib.json_loads.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
        self.lib.json_delete.argtypes = [ctypes.c_void_p]
        self.lib.hb_filter_compile.restype = ctypes.c_void_p
        self.lib.hb_filter_compile.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        self.lib.hb_filter_free.argtypes = [ctypes.c_void_p]
        self.lib.hb_filter_match.argtypes = [ctypes.c_void_p, ctypes.c_void_p]

    def _load(self, value):
        # JSON_DECODE_ANY (0x4): the spec may be a bare scalar
        j = self.lib.json_loads(json.dumps(value).encode(), 0x4, None)
        assert j, f"jansson could not parse {value!r}"
        return j

    def problem(self, spec):
        j = self._load(spec)
        err = ctypes.create_string_buffer(1024)
        f = self.lib.hb_filter_compile(j, err, len(err))
        self.lib.json_delete(j)
        if f:
            self.lib.hb_filter_free(f)
            return None
        return err.value.decode()


@pytest.fixture(scope="module")
def c_filter(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert cc, "a C compiler is needed to build lib/hb_filter.c for this test"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "jansson"], capture_output=True,
                           text=True, check=True).stdout.split()
    so = tmp_path_factory.mktemp("cfilter") / "libhbfilter.so"
    subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-O1", "-shared", "-fPIC",
                    "-I", str(REPO / "lib"), str(REPO / "lib" / "hb_filter.c"),
                    str(REPO / "lib" / "hb_common.c"), "-o", str(so), *flags],
                   check=True, capture_output=True, text=True)
    return CFilter(so)


@pytest.fixture(scope="module")
def conn(pg_cluster):
    """One migrated database for the module: the validator is IMMUTABLE and
    touches no table, so cases cannot disturb each other."""
    name = pg_cluster.migrated_database("filter")
    c = psycopg2.connect(pg_cluster.url(name))
    c.autocommit = True
    yield c
    c.close()
    try:
        pg_cluster.drop_database(name)
    except Exception:  # a failed drop must not mask the test's own result
        pass


def sql_problem(conn, spec):
    with conn.cursor() as cur:
        cur.execute("SELECT hookbridge.filter_problem(%s::jsonb)", (json.dumps(spec),))
        return cur.fetchone()[0]


def check_filter_error(conn, spec):
    """(sqlstate, message) raised by check_filter, or None when it accepts."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT hookbridge.check_filter(%s::jsonb)", (json.dumps(spec),))
    except psycopg2.Error as e:
        return e.pgcode, e.diag.message_primary
    return None


@pytest.mark.parametrize("case", VALID, ids=[c["name"] for c in VALID])
def test_valid_filter_is_accepted_by_sql_and_by_the_dispatcher(conn, c_filter, case):
    assert c_filter.problem(case["filter"]) is None
    assert sql_problem(conn, case["filter"]) is None
    assert check_filter_error(conn, case["filter"]) is None


@pytest.mark.parametrize("case", INVALID, ids=[c["name"] for c in INVALID])
def test_invalid_filter_is_refused_by_both_with_the_same_message(conn, c_filter, case):
    c_msg = c_filter.problem(case["filter"])
    sql_msg = sql_problem(conn, case["filter"])
    assert c_msg is not None and case["error"] in c_msg
    assert sql_msg is not None and case["error"] in sql_msg
    # Each table case has one problem, so both report it in the same words.
    assert sql_msg == c_msg
    # What a caller of check_filter sees: SQLSTATE HB013 and that message.
    assert check_filter_error(conn, case["filter"]) == ("HB013", sql_msg)


def test_table_is_large_enough_to_mean_something():
    assert len(VALID) + len(INVALID) >= 60
    assert sum(len(c["cases"]) for c in VALID) >= 100


def test_no_filter_is_valid(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT hookbridge.filter_problem(NULL), hookbridge.check_filter(NULL)")
        assert cur.fetchone() == (None, "")


def test_validator_functions_are_immutable_with_a_fixed_search_path(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT p.proname, p.provolatile, p.proconfig FROM pg_proc p "
                    "JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname = 'hookbridge' AND p.proname IN ('filter_problem', 'check_filter')")
        rows = {r[0]: r[1:] for r in cur.fetchall()}
    assert set(rows) == {"filter_problem", "check_filter"}
    for volatility, config in rows.values():
        assert volatility == "i"
        assert config == ["search_path=pg_catalog, hookbridge, public"]


# --- generated filters ----------------------------------------------------------

PATHS_OK = ["eventType", "outcome.result", "target[].type", "a_1.B2[].c", "x",
            ".".join(["s"] * 16), "p" * 256, ".".join(["s[]"] * 16)]
PATHS_BAD = ["", "a..b", "a.", "a[0]", "a-b", "caf\u00e9", ".".join(["s"] * 17), "p" * 257,
             "a[][]", "$x", "a\n"]
SCALARS_OK = ["v", "", 0, 1.5, -3, True, False, None, "x" * 1024, "\u00e9" * 512]
SCALARS_BAD = [[1], {}, {"a": 1}, "x" * 1025, "\u00e9" * 513]


def gen_scalar(rng, bad):
    return rng.choice(SCALARS_BAD if bad else SCALARS_OK)


def gen_condition(rng, bad_rate):
    bad = rng.random() < bad_rate
    r = rng.random()
    if r < 0.25:
        return gen_scalar(rng, bad)
    if bad and r < 0.35:
        return rng.choice([[1, 2], {}, {"result": "x"}, {"$gt": 1}, {"$EQ": 1}, {"$and": [{}]}])
    ops = {}
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["$eq", "$ne", "$in", "$nin", "$exists", "$prefix"])
        bad_op = rng.random() < bad_rate
        if op in ("$eq", "$ne"):
            ops[op] = gen_scalar(rng, bad_op)
        elif op in ("$in", "$nin"):
            n = rng.choice([1, 2, 99, 100, 101] if bad_op else [1, 3, 100])
            items = [gen_scalar(rng, False) for _ in range(min(n, 3))] + list(range(n - min(n, 3)))
            if bad_op and rng.random() < 0.5:
                items = rng.choice([[], "x", None, [1, [2]], [{"a": 1}]])
            ops[op] = items
        elif op == "$exists":
            ops[op] = rng.choice(["yes", 1, None] if bad_op else [True, False])
        else:
            ops[op] = rng.choice([5, None, ["x"], "x" * 1025] if bad_op else ["", "ab", "y" * 1024])
    return ops


def gen_filter(rng, depth, bad_rate):
    if depth > 1 and rng.random() < bad_rate / 4:
        return rng.choice([{}, [], "x", None, 1])
    f = {}
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if r < 0.3 and depth < 10:
            kind = rng.choice(["$and", "$or", "$not"])
            if kind == "$not":
                f[kind] = gen_filter(rng, depth + 1, bad_rate)
            elif rng.random() < bad_rate / 4:
                f[kind] = rng.choice([[], {}, "x"])
            else:
                f[kind] = [gen_filter(rng, depth + 1, bad_rate) for _ in range(rng.randint(1, 3))]
        elif r < 0.33 and rng.random() < bad_rate:
            f[rng.choice(["$nor", "$eq", "$", "$AND"])] = [{"a": 1}]
        else:
            bad_path = rng.random() < bad_rate / 2
            f[rng.choice(PATHS_BAD if bad_path else PATHS_OK)] = gen_condition(rng, bad_rate)
    return f


def wide(rng, n):
    """Wide filters that land around the 64-condition bound."""
    return {"$or": [{f"f{i}": {"$eq": i, "$ne": -1}} if i % 3 == 0 else {f"f{i}": i}
                    for i in range(n)]}


def test_generated_filters_get_the_same_verdict_from_sql_and_the_dispatcher(conn, c_filter):
    rng = random.Random(20261129)
    filters = [gen_filter(rng, 1, rng.choice([0.0, 0.02, 0.1, 0.3])) for _ in range(600)]
    filters += [wide(rng, n) for n in range(40, 52)]
    disagreements = []
    counts = {"valid": 0, "invalid": 0}
    for f in filters:
        c_msg, sql_msg = c_filter.problem(f), sql_problem(conn, f)
        if (c_msg is None) != (sql_msg is None):
            disagreements.append((f, c_msg, sql_msg))
        counts["valid" if c_msg is None else "invalid"] += 1
    assert not disagreements, json.dumps(disagreements[:3])[:3000]
    # the generator must exercise both sides for the comparison to mean anything
    assert counts["valid"] >= 100 and counts["invalid"] >= 100, counts
