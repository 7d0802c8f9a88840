"""Operating hookbridge: the configuration reference cannot drift from the
code, secrets never reach the logs, SIGTERM drains without losing or
repeating deliveries, and readiness follows the database.

Also a script: `/usr/bin/python3 tests/e2e/test_ops.py --write-config-doc [BIN_DIR]`
rewrites the generated table in docs/configuration.md from the binary.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from hbtest.opscheck import config_reference, parse_reference, reference_text  # noqa: E402
from hbtest.procs import BIN, REPO  # noqa: E402

DOC = REPO / "docs" / "configuration.md"
BEGIN = re.compile(r"^<!-- BEGIN config-reference.*-->\n", re.M)
END = "<!-- END config-reference -->"
# Read by one program outside the settings table, documented by hand.
EXTRA_VARIABLES = {"HOOKBRIDGE_MIGRATIONS_DIR"}
# The doc's example of a property librdkafka refuses.
REFUSED_EXAMPLE = "HOOKBRIDGE_KAFKA_NO_SUCH_THING"


def doc_table(text):
    m = BEGIN.search(text)
    assert m and END in text, f"{DOC}: the generated-table markers are missing"
    return text[m.end():text.index(END)]


def write_config_doc(reference):
    text = DOC.read_text()
    m = BEGIN.search(text)
    DOC.write_text(text[:m.end()] + reference + text[text.index(END):])


def json_msgs(output):
    """The "msg" of every JSON log line in a program's output."""
    out = []
    for line in output.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line)["msg"])
    return out


# ------------------------------------------------------ configuration doc


def test_configuration_doc_is_the_binarys_reference():
    """Every variable is documented with the binary's default, type, programs
    and text; a setting added to the code without regenerating fails here."""
    want = config_reference()
    got = parse_reference(doc_table(DOC.read_text()))
    problems = []
    for var in sorted(set(want) - set(got)):
        problems.append(f"{var} is not documented")
    for var in sorted(set(got) - set(want)):
        problems.append(f"{var} is documented but the program does not read it")
    for var in sorted(set(want) & set(got)):
        for field in ("default", "type", "flag", "programs"):
            if want[var][field] != got[var][field]:
                problems.append(f"{var}: {field} is {want[var][field]!r} in the code, "
                                f"{got[var][field]!r} in the doc")
    assert not problems, ("docs/configuration.md is out of date (regenerate: /usr/bin/python3 "
                          "tests/e2e/test_ops.py --write-config-doc):\n  " + "\n  ".join(problems))
    # Byte for byte, so descriptions cannot drift either.
    assert doc_table(DOC.read_text()) == reference_text(), \
        "descriptions differ: regenerate with tests/e2e/test_ops.py --write-config-doc"


def test_every_program_prints_the_same_reference():
    ref = reference_text()
    for prog in ("hookbridge-retrier", "hookbridge-producer"):
        assert reference_text(prog) == ref, prog
    # hookbridge-migrate prints the same table (followed by its usage).
    assert reference_text("hookbridge-migrate").startswith(ref)


def test_every_variable_the_doc_names_is_real(tmp_path):
    """The prose and examples name only variables that exist: settings,
    passthrough properties librdkafka knows, or the documented extras (and
    those are really read)."""
    from test_deploy import librdkafka_properties
    ref = config_reference()
    props = librdkafka_properties()
    text = DOC.read_text()
    for name in sorted(set(re.findall(r"HOOKBRIDGE_[A-Z0-9_]+", text))):
        if name in ref or name in EXTRA_VARIABLES or name in ("HOOKBRIDGE_KAFKA_",
                                                              REFUSED_EXAMPLE):
            continue
        assert name.startswith("HOOKBRIDGE_KAFKA_"), f"docs name {name}, which nothing reads"
        prop = name[len("HOOKBRIDGE_KAFKA_"):].lower().replace("_", ".")
        assert prop in props, f"docs name {name}: librdkafka has no property {prop}"
    for name in EXTRA_VARIABLES:
        assert f"`{name}`" in text
    # The refused property: the program stops at start with the line the doc shows.
    line = re.search(r"^    (cannot start: .*)$", text, re.M).group(1)
    env = dict(os.environ, HOOKBRIDGE_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
               HOOKBRIDGE_HTTP_LISTEN="127.0.0.1:0", **{REFUSED_EXAMPLE: "1"})
    r = subprocess.run([str(BIN / "hookbridge-dispatcher")], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and json_msgs(r.stdout + r.stderr)[-1] == line
    # HOOKBRIDGE_MIGRATIONS_DIR: hookbridge-migrate looks where it points.
    missing = tmp_path / "no-such-dir"
    env = dict(os.environ, HOOKBRIDGE_MIGRATIONS_DIR=str(missing),
               HOOKBRIDGE_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    r = subprocess.run([str(BIN / "hookbridge-migrate"), "status"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and str(missing) in r.stdout + r.stderr


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "--write-config-doc":
        sys.exit("usage: test_ops.py --write-config-doc [BIN_DIR]")
    if len(sys.argv) > 2:
        BIN = Path(sys.argv[2])
    r = subprocess.run([str(BIN / "hookbridge-dispatcher"), "--config-reference"],
                       capture_output=True, text=True, check=True)
    write_config_doc(r.stdout)
    print(f"{DOC}: configuration table rewritten from {BIN / 'hookbridge-dispatcher'}")
