"""The documentation as a contract (review 23): the names an operator acts on
in README.md and docs/*.md exist in the code with the shape the docs give.
Fast (static, but for one look at a migrated database); each check covers a
whole class of drift:

- every metric the docs name (prose, tables, dashboards, runbooks, ingest.md)
  is registered in the C sources, with the labels and label values the docs
  use; the metric table of docs/operations.md gives each metric exactly its
  labels (test_ops compares the table's *families* with a running
  dispatcher and retrier; test_review9_faults checks the alert rules);
- every SQLSTATE (HBxxx) the docs name is raised in sql/, docs/sql.md's
  Errors table lists each code raised, and each sql/ file lists at its top
  the codes it raises (README.md, Errors);
- every hookbridge.f(...) the docs call is a function of sql/ taking that
  many arguments and those named ones, every hookbridge.x they name exists,
  and docs/sql.md, "every function and view", names each one of sql/, as
  migrations/README.md's table names each in the row of its file;
- docs/sql.md against a migrated database: each view's documented columns
  are its columns, every table is listed, with columns it has, and the
  limits are hookbridge.limits' rows and values;
- a default the docs quote for a setting outside the generated table
  (README's table, the other pages' tables, "`HOOKBRIDGE_X` (5 s)") is the
  programs' (test_ops checks configuration.md's table);
- docs/chaos.md's settings are the CHAOS_* variables tests/chaos/chaos.py reads,
  with its defaults;
- a log line the docs quote (where they say a service logs it, or "at
  warn") is printed by a format string of ours (C, or sql/'s messages);
- every make target and variable the docs give is the Makefile's, and every
  --flag given to a hookbridge program is in that program's --help;
- every link between the pages reaches an existing file and heading.

Each check was shown to fail on a doc with a planted drift (see the report of
review 23)."""
import re
import subprocess

from hbtest.opscheck import config_reference, duration_seconds
from hbtest.procs import BIN, REPO

DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
C_DIRS = ("lib", "dispatcher", "retrier", "producer", "migrations", "secret")
SQL_FILES = sorted((REPO / "sql").glob("*.sql"))
MIGRATIONS = sorted((REPO / "migrations").glob("*.sql"))


def c_sources():
    for d in C_DIRS:
        yield from sorted((REPO / d).glob("*.c"))


def doc_texts():
    return [(d.relative_to(REPO), d.read_text()) for d in DOCS]


def where(path, text, pos):
    return f"{path}:{text.count(chr(10), 0, pos) + 1}"


# ------------------------------------------------------------------ metrics


def registered_metrics():
    """name -> (kind, {label: {values}}) from the hb_metrics_* calls. A label
    argument that is a variable is read from the format strings of the few
    lines before the call (the loops that build it); a %d in a value stands
    for a digit."""
    out = {}
    for f in c_sources():
        text = f.read_text()
        lines = text.splitlines()
        for m in re.finditer(r'hb_metrics_(counter|gauge|histogram)\(\s*"(hookbridge_[a-z_]+)",'
                             r'\s*([^,]+),', text):
            kind, name, arg = m.group(1), m.group(2), m.group(3).strip()
            if arg == "NULL":
                src = ""
            elif arg.startswith('"'):
                src = arg
            else:
                line = text.count("\n", 0, m.start())
                src = "\n".join(lines[max(0, line - 6):line + 1])
            labels = out.setdefault(name, (kind, {}))[1]
            for lm in re.finditer(r'([a-z_]+)=\\"([^"\\]*)\\"', src):
                labels.setdefault(lm.group(1), set()).add(lm.group(2))
    assert len(out) > 30, f"only {len(out)} metrics found: the pattern is stale"
    return out


def value_ok(values, v):
    for have in values:
        if "%" not in have and have == v:
            return True
        pat = re.escape(have).replace("%d", r"\d+").replace("%s", ".+")
        if "%" in have and re.fullmatch(pat, v):
            return True
    return False


def sql_names():
    """Every hookbridge_* name the SQL side uses (roles, tables, NOTIFY
    channels): not metrics."""
    text = "\n".join(p.read_text() for p in SQL_FILES + MIGRATIONS)
    return set(re.findall(r"\b(hookbridge_[a-z_]+)", text))


def test_every_metric_the_docs_name_is_registered_with_those_labels():
    reg = registered_metrics()
    not_metrics = sql_names()
    problems = []
    for path, text in doc_texts():
        for m in re.finditer(r"\b(hookbridge_[a-z_]+)(\{[^}]*\})?", text):
            name, sel = m.group(1), m.group(2) or ""
            base = name
            for suffix in ("_bucket", "_sum", "_count"):
                stem = name[:-len(suffix)]
                if name.endswith(suffix) and reg.get(stem, ("",))[0] == "histogram":
                    base = stem
            at = where(path, text, m.start())
            if base not in reg:
                if name not in not_metrics:
                    problems.append(f"{at}: {name} is not a registered metric")
                continue
            labels = reg[base][1]
            extra = {"le"} if base != name else set()
            # {outcome}, {topic,partition}: the label names only
            for label in re.findall(r"[{,]\s*([a-z_]+)\s*(?=[,}])", sel):
                if label not in labels and label not in extra:
                    problems.append(f"{at}: {name} has no label {label!r}")
            # {class="2xx|4xx"}: PromQL, or the docs' own "one of" shorthand
            for lm in re.finditer(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"', sel):
                label, op, val = lm.groups()
                if label in extra:
                    continue
                if label not in labels:
                    problems.append(f"{at}: {name} has no label {label!r}")
                    continue
                if label in ("topic", "partition", "tier") or "~" in op and ".*" in val:
                    continue
                for v in val.split("|"):
                    if not value_ok(labels[label], v):
                        problems.append(f"{at}: {name}{{{label}}} is never {v!r} "
                                        f"(the code gives {sorted(labels[label])})")
    # docs/operations.md's table names each metric with all of its labels.
    ops = (REPO / "docs" / "operations.md").read_text()
    for m in re.finditer(r"^\| `(hookbridge_[a-z_]+)(?:\{([^}]*)\})?` \|", ops, re.M):
        name, listed = m.group(1), set(filter(None, (m.group(2) or "").split(",")))
        if name in reg and listed != set(reg[name][1]):
            problems.append(f"docs/operations.md: the table gives {name} the labels "
                            f"{sorted(listed)}, the code {sorted(reg[name][1])}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------- SQLSTATEs


def raised_codes():
    """sql/ file name -> the HBxxx codes its statements raise."""
    return {p.name: set(re.findall(r"ERRCODE\s*=\s*'(HB\d{3})'", p.read_text()))
            for p in SQL_FILES}


def test_every_sqlstate_the_docs_name_is_raised_and_listed():
    by_file = raised_codes()
    raised = set().union(*by_file.values())
    assert len(raised) > 20, "ERRCODE pattern is stale"
    problems = []
    for path, text in doc_texts():
        for m in re.finditer(r"\bHB\d{3}\b", text):
            if m.group(0) not in raised:
                problems.append(f"{where(path, text, m.start())}: {m.group(0)} is raised "
                                f"nowhere in sql/")
    # docs/sql.md, Errors: one row per code raised, and no other.
    sqlmd = (REPO / "docs" / "sql.md").read_text()
    errors = sqlmd[sqlmd.index("## Errors"):]
    errors = errors[:errors.index("\n## ")]
    table = set(re.findall(r"^\| `(HB\d{3})` \|", errors, re.M))
    if table != raised:
        problems.append(f"docs/sql.md, Errors: missing {sorted(raised - table)}, "
                        f"not raised {sorted(table - raised)}")
    # README.md: "each file of sql/ lists the ones it raises at its top"
    for p in SQL_FILES:
        text = p.read_text()
        head = text[:text.index("\nCREATE")] if "\nCREATE" in text else text
        missing = by_file[p.name] - set(re.findall(r"HB\d{3}", head))
        if missing:
            problems.append(f"sql/{p.name}: raises {sorted(missing)}, not listed at its top")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------ SQL functions


def split_args(text):
    """Top-level comma-separated parts of an argument list (parentheses,
    brackets and quotes respected)."""
    parts, depth, cur, quote = [], 0, "", False
    for ch in text:
        if ch == "'":
            quote = not quote
        elif not quote and ch in "([":
            depth += 1
        elif not quote and ch in ")]":
            depth -= 1
        elif not quote and ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def balanced(text, start):
    """The text from start (just past an opening parenthesis) to its match."""
    depth, i, quote = 1, start, False
    while i < len(text) and depth:
        ch = text[i]
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        i += 1
    return text[start:i - 1]


def sql_functions():
    """name -> [(required args, all args, parameter names)], every overload;
    OUT parameters are not arguments."""
    out = {}
    for p in SQL_FILES + MIGRATIONS:
        text = p.read_text()
        for m in re.finditer(r"CREATE (?:OR REPLACE )?FUNCTION hookbridge\.(\w+)\s*\(", text):
            params = [a for a in split_args(balanced(text, m.end()))
                      if not re.match(r"OUT\b", a, re.I)]
            names = [re.sub(r"^(IN|INOUT)\s+", "", a, flags=re.I).split()[0] for a in params]
            req = sum(1 for a in params if not re.search(r"\bDEFAULT\b", a, re.I))
            out.setdefault(m.group(1), []).append((req, len(params), names))
    assert len(out) > 40, f"only {len(out)} functions found: the pattern is stale"
    return out


def sql_relations():
    text = "\n".join(p.read_text() for p in SQL_FILES + MIGRATIONS)
    return set(re.findall(
        r"CREATE (?:UNLOGGED )?(?:TABLE|(?:OR REPLACE )?VIEW)\s+(?:IF NOT EXISTS\s+)?"
        r"hookbridge\.(\w+)", text))


def call_fits(overloads, args):
    named = [re.match(r"(\w+)\s*=>", a).group(1) for a in args if re.match(r"\w+\s*=>", a)]
    return any(req <= len(args) <= total and all(n in names for n in named)
               for req, total, names in overloads)


def test_every_sql_function_the_docs_call_exists_with_those_arguments():
    funcs = sql_functions()
    rels = sql_relations()
    topics = {"dlq", "retry", "events"}  # hookbridge.dlq, hookbridge.retry.5s: Kafka topics
    problems = []
    for path, text in doc_texts():
        for m in re.finditer(r"\bhookbridge\.(\w+)(\s*\()?", text):
            name, at = m.group(1), where(path, text, m.start())
            if name in topics or text[m.end():m.end() + 1] == "." and not m.group(2):
                continue
            if not m.group(2):
                if name not in funcs and name not in rels and name[0].islower():
                    problems.append(f"{at}: hookbridge.{name} is no function, table or view")
                continue
            if name not in funcs:
                problems.append(f"{at}: no function hookbridge.{name}")
                continue
            inner = balanced(text, m.end())
            if "..." in inner or not inner.strip():  # f(): the name, not a call
                continue
            args = split_args(inner)
            if not call_fits(funcs[name], args):
                problems.append(f"{at}: hookbridge.{name}({inner}) fits no definition "
                                f"{funcs[name]}")
    # The signatures the references give: ### f(args) in sql.md, `f(args) → ...`
    # in the function tables of sql.md and design.md.
    for rel in ("docs/sql.md", "docs/design.md"):
        text = (REPO / rel).read_text()
        for m in re.finditer(r"(?:^### |^\| `|/ `|^### .*? / )([a-z_]+)\(([^)`]*)\)", text, re.M):
            name, inner = m.group(1), m.group(2)
            if name not in funcs:
                problems.append(f"{where(rel, text, m.start())}: no function {name}")
                continue
            if "..." in inner:
                continue
            args = [re.sub(r"\s+DEFAULT\b.*", "", a).split()[0] for a in split_args(inner)]
            if not any(req <= len(args) <= total for req, total, _ in funcs[name]):
                problems.append(f"{where(rel, text, m.start())}: {name}({inner}) has "
                                f"{len(args)} arguments; sql/ {funcs[name]}")
    # README.md: docs/sql.md has "every function and view".
    sqlmd = (REPO / "docs" / "sql.md").read_text()
    for name in sorted(set(funcs) | rels):
        if name.startswith("_") or name.endswith(("_p_default", "_default")):
            continue
        if name in funcs and not re.search(rf"\b{name}\(", sqlmd):
            problems.append(f"docs/sql.md does not document the function {name}")
    # migrations/README.md's table of sql/ files names each one's functions
    # and views (no helpers: they begin with _).
    layout = (REPO / "migrations" / "README.md").read_text()
    views = set()
    for p in SQL_FILES:
        text = p.read_text()
        views |= set(re.findall(r"CREATE OR REPLACE VIEW hookbridge\.(\w+)", text))
        row = re.search(rf"^\| `{p.name}` \|(.*)$", layout, re.M)
        if not row:
            problems.append(f"migrations/README.md has no row for sql/{p.name}")
            continue
        for name in re.findall(r"CREATE OR REPLACE (?:FUNCTION|VIEW) hookbridge\.([a-z]\w*)", text):
            if not re.search(rf"`{name}(?:\(\))?`", row.group(1)):
                problems.append(f"migrations/README.md: sql/{p.name}'s row does not name {name}")
    for v in sorted(views):
        if not re.search(rf"### (?:hookbridge\.)?{v}\b", sqlmd):
            problems.append(f"docs/sql.md has no section on the view {v}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------- make and programs


def test_every_make_target_and_program_flag_the_docs_give_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:+]?=", makefile, re.M)) | \
        set(re.findall(r"\$\(([A-Z_]+)\)", makefile)) | \
        set(re.findall(r"ifdef ([A-Z_]+)", makefile))
    scripts = "\n".join(p.read_text() for p in (REPO / "scripts").glob("*") if p.is_file()) + \
        "\n".join(p.read_text() for p in (REPO / "tests" / "chaos").glob("*.py"))
    helps = {}
    for p in sorted(BIN.glob("hookbridge-*")):
        r = subprocess.run([str(p), "--help"], capture_output=True, text=True, timeout=30)
        helps[p.name] = r.stdout + r.stderr
    assert "hookbridge-dispatcher" in helps, f"no programs in {BIN}"
    problems = []
    for path, text in doc_texts():
        for m in re.finditer(r"`((?:[A-Z_]+=\S+ )*)make((?: [^`]*)?)`", text):
            at = where(path, text, m.start())
            words = m.group(2).split()
            for w in words:
                if "=" in w:
                    var = w.split("=")[0]
                    if var not in variables and var not in scripts:
                        problems.append(f"{at}: make {var}=...: the Makefile has no {var}")
                elif re.fullmatch(r"[a-z][a-z-]*", w) and w not in targets:
                    problems.append(f"{at}: make {w}: no such target")
        for m in re.finditer(r"`(hookbridge-[a-z]+)((?: [^`]*)?)`", text):
            prog, rest = m.group(1), m.group(2)
            if prog not in helps:
                continue
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
                if flag != "--help" and flag not in helps[prog]:
                    problems.append(f"{where(path, text, m.start())}: {prog} has no {flag}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------ tables and views


def test_sql_md_gives_the_databases_tables_and_view_columns(db_url):
    """docs/sql.md against a migrated database: each view with a column
    table documents exactly its columns; the table of tables lists every
    table of schema hookbridge, and the columns a row names are that
    table's."""
    import psycopg2
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT c.relname, c.relkind FROM pg_class c WHERE c.relnamespace = "
                    "'hookbridge'::regnamespace AND c.relkind IN ('r', 'p', 'v') "
                    "AND NOT c.relispartition")
        kinds = dict(cur.fetchall())
        cur.execute("SELECT table_name, array_agg(column_name::text) FROM "
                    "information_schema.columns WHERE table_schema = 'hookbridge' GROUP BY 1")
        columns = {t: set(c) for t, c in cur.fetchall()}
        cur.execute("SELECT name, value FROM hookbridge.limits")
        limits = {n: str(v) for n, v in cur.fetchall()}
    text = (REPO / "docs" / "sql.md").read_text()
    funcs = sql_functions()
    problems = []
    views = text[text.index("\n## Views"):text.index("\n## Limits")]
    for m in re.finditer(r"^### hookbridge\.(\w+)\n(.*?)(?=^### |\Z)", views, re.M | re.S):
        view, body = m.group(1), m.group(2)
        documented = set()
        for row in re.findall(r"^\| (`[^|]*`) \|", body, re.M):
            documented |= set(re.findall(r"`(\w+)`", row))
        if kinds.get(view) != "v":
            problems.append(f"docs/sql.md: hookbridge.{view} is not a view")
        elif documented != columns[view]:
            problems.append(f"docs/sql.md, {view}: not documented "
                            f"{sorted(columns[view] - documented)}, no such column "
                            f"{sorted(documented - columns[view])}")
    # Limits: every row of hookbridge.limits, with its value.
    section = text[text.index("\n## Limits"):text.index("\n## Errors")]
    documented = dict(re.findall(r"^\| `(\w+)` \| ([0-9]+) \|", section, re.M))
    for name in sorted(set(documented) | set(limits)):
        if documented.get(name) != limits.get(name):
            problems.append(f"docs/sql.md, Limits: {name} is {documented.get(name)}, in the "
                            f"database {limits.get(name)}")
    tables = text[text.index("\n## Tables"):]
    tables = tables[:tables.index("\n\n", tables.index("| table |"))]
    listed = {}
    for m in re.finditer(r"^\| `(\w+)` \| (.*) \|$", tables, re.M):
        listed[m.group(1)] = m.group(2)
    for t in sorted(set(k for k, v in kinds.items() if v in "rp") - set(listed)):
        problems.append(f"docs/sql.md, Tables: hookbridge.{t} is not listed")
    for t, row in sorted(listed.items()):
        if t not in kinds:
            problems.append(f"docs/sql.md, Tables: there is no table hookbridge.{t}")
            continue
        # `name` bare in a row is a column of its table, unless it names
        # another table, a function, a view or a value in quotes.
        for name in re.findall(r"`([a-z_]+)`(?!\()", row):
            if name in columns[t] or name in kinds or name in funcs or \
                    re.search(rf"`{name}\(", row):
                continue
            problems.append(f"docs/sql.md, Tables, {t}: no column {name}")
    assert not problems, "\n".join(problems)


def test_chaos_md_settings_are_the_suites():
    """docs/chaos.md's settings table: every CHAOS_* variable tests/chaos/
    chaos.py reads, with its default, and no other."""
    import ast
    src = (REPO / "tests" / "chaos" / "chaos.py").read_text()
    m = re.search(r"^SETTINGS = (\{.*?^\})", src, re.M | re.S)
    settings = {k: v[0] for k, v in ast.literal_eval(m.group(1)).items()}
    text = (REPO / "docs" / "chaos.md").read_text()
    section = text[text.index("## Settings"):]
    section = section[:section.index("\n## ")]
    documented = {}
    for names, default in re.findall(r"^\| (`[^|]*`) \| ([^|]*) \|", section, re.M):
        names = re.findall(r"`(\w+)`", names)
        defaults = [d.strip().strip("`") for d in default.split(",")] \
            if len(names) > 1 else [default.strip().strip("`")]
        documented.update(zip(names, defaults))
    problems = []
    for var, want in settings.items():
        if var not in documented:
            problems.append(f"{var} is not in the table")
        elif (float(documented[var]) if isinstance(want, (int, float))
              else documented[var]) != want:
            problems.append(f"{var}: the table says {documented[var]}, chaos.py {want}")
    extra = set(documented) - set(settings) - {"CHAOS_SCENARIOS", "HOOKBRIDGE_BIN"}
    if extra:
        problems.append(f"documented, not read: {sorted(extra)}")
    assert not problems, "docs/chaos.md, Settings:\n" + "\n".join(problems)


# ---------------------------------------------------- defaults in the prose

UNITS = {"ms": 0.001, "s": 1, "sec": 1, "seconds": 1, "second": 1, "m": 60, "min": 60,
         "minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600, "d": 86400,
         "day": 86400, "days": 86400, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


def amount(text):
    """A number with an optional unit (5 s, 1m, 64 MiB, 10 minutes, 512), as
    seconds or bytes; None when text is not one."""
    m = re.fullmatch(r"([0-9][0-9,]*(?:\.[0-9]+)?)\s*([A-Za-z]*)", text.strip().strip("`"))
    if not m or (m.group(2) and m.group(2).lower() not in UNITS):
        return None
    return float(m.group(1).replace(",", "")) * UNITS.get(m.group(2).lower(), 1)


def test_the_defaults_the_docs_quote_are_the_programs():
    """Outside the generated table too (README's table, the other pages'
    tables, "`HOOKBRIDGE_X` (5 s)" in the prose), a default the docs give
    for a setting is the one the programs have."""
    ref = config_reference()
    problems = []
    for path, text in doc_texts():
        if path.name == "configuration.md":
            continue  # test_ops compares it with the binary byte for byte
        found = []
        # | `HOOKBRIDGE_X` | default | ...   and   | `A`, `B` | `1`, `2` | ...
        for m in re.finditer(r"^\| ((?:`HOOKBRIDGE_[A-Z0-9_]+`(?:, )?)+) \| ([^|]*) \|", text,
                             re.M):
            names = re.findall(r"`(HOOKBRIDGE_[A-Z0-9_]+)`", m.group(1))
            cells = m.group(2).split(",") if len(names) > 1 else [m.group(2)]
            for name, cell in zip(names, cells):
                cell = re.sub(r"\s*\([^)]*\)\s*$", "", cell.strip())  # `67108864` (64 MiB)
                found.append((m.start(), name, cell))
        # `HOOKBRIDGE_X` (5 s)   `HOOKBRIDGE_X` (default 5 s)
        for m in re.finditer(r"`(HOOKBRIDGE_[A-Z0-9_]+)`\s*\((?:default )?([^)]*)\)", text):
            found.append((m.start(), m.group(1), m.group(2)))
        for pos, name, cell in found:
            got = amount(re.sub(r"\s+", " ", cell))
            if name not in ref or got is None:
                continue
            typ, want = ref[name]["type"], ref[name]["default"]
            if typ == "duration":
                want = duration_seconds(want)
            elif typ == "integer":
                want = float(want)
            else:
                want = amount(want)
            if want is not None and abs(got - want) > 1e-9:
                problems.append(f"{where(path, text, pos)}: {name} ({cell}), the programs' "
                                f"default is {ref[name]['default']}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------- log lines

# Quoted in the docs as what a log says, but written by librdkafka or
# PostgreSQL, not by us.
NOT_OURS = ("Connect to ... failed", "all brokers are down", "could not extend file",
            "Static consumer fenced")
CONVERSION = re.compile(r"%[-+ #0-9.*]*(?:hh|h|ll|l|z|j|t)?[sdiufxXpgc]")
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|…|\b[NMX]\b|\b[0-9][0-9a-f.,:-]*\b")


def format_strings():
    """Our C sources' string literals (adjacent ones joined) and sql/'s
    (RAISE and format() texts), each with its conversions as NUL: what a
    log line or a reason is made of."""
    out = []
    for f in list(c_sources()) + sorted((REPO / "examples" / "receiver").glob("*.c")):
        # the code's literals only: no comments, no character constants
        # ('"' would pair the quotes wrongly); "%" PRId64 " messages" is
        # one literal, "%d messages"
        text = re.sub(r'"\s*PRI[a-zA-Z0-9]+\s*"', "d", f.read_text())
        text = re.sub(r"""("(?:[^"\\\n]|\\.)*")|'(?:[^'\\\n]|\\.)+'|/\*.*?\*/|//[^\n]*""",
                      lambda m: m.group(1) or " ", text, flags=re.S)
        text = re.sub(r'"\s*\n\s*"', "", text)
        for s in re.findall(r'"((?:[^"\\\n]|\\.)*)"', text):
            out.append(CONVERSION.sub("\x00", s.replace('\\"', '"')))
    for p in SQL_FILES:
        for s in re.findall(r"'((?:[^'\n]|'')*)'", p.read_text()):
            if not s.startswith("%") and not s.endswith("%"):  # not a LIKE pattern
                out.append(re.sub(r"%[sIL]?", "\x00", s.replace("''", "'")))
    return out


def globs_meet(a, b):
    """Do two patterns, literal text with NUL for "anything", share a
    string? (Both sides vary: the quote's placeholders, the format's
    conversions.)"""
    n, m = len(a), len(b)
    row = [False] * (m + 1)  # row[j]: a[i:] and b[j:] meet, from the end
    row[m] = True
    for j in range(m - 1, -1, -1):
        row[j] = row[j + 1] and b[j] == "\x00"
    for i in range(n - 1, -1, -1):
        new = [False] * (m + 1)
        new[m] = row[m] and a[i] == "\x00"
        for j in range(m - 1, -1, -1):
            if a[i] == "\x00":
                new[j] = row[j] or new[j + 1]
            elif b[j] == "\x00":
                new[j] = new[j + 1] or row[j]
            else:
                new[j] = a[i] == b[j] and row[j + 1]
        row = new
    return row[0]


def quoted_matches(quote, formats):
    """Does some format string print the quoted text? The quote's <...>,
    ..., N, M, X and numbers stand for what varies, as the formats'
    conversions do. The quote is one format's line, or its start when it
    ends in a placeholder, or lies within one format's text; or, for a
    line built of several formats ("HTTP 502 (asked again; ...)"), each
    of its fixed pieces is text of ours."""
    pieces = PLACEHOLDER.split(quote)
    glob = "\x00".join(pieces)
    fixed = len("".join(pieces))
    inside = re.compile(".*".join(re.escape(p) for p in pieces))
    for fmt in formats:
        if inside.search(fmt.replace("\x00", "X")):
            return True
        lit = fmt.replace("\x00", "")
        if 2 * len(lit) < fixed or not any(len(c) >= 8 and c in quote for c in fmt.split("\x00")):
            continue
        if globs_meet(glob, fmt):
            return True
    stripped = [p.strip() for p in pieces]
    return len(pieces) > 1 and not glob.endswith("\x00") and \
        all(any(p in fmt for fmt in formats) for p in stripped if len(p) >= 4)


def test_the_log_lines_the_docs_quote_are_the_programs():
    """A line the docs say a service logs (or its reason, or a message) is
    printed by some format string of ours: an operator greps for it."""
    formats = format_strings()
    problems = []
    for path, text in doc_texts():
        text = re.sub(r"```.*?```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text,
                      flags=re.S)
        for m in re.finditer(r"`([^`]+)`", text):
            before = text[max(0, m.start() - 50):m.start()]
            after = text[m.end():m.end() + 30]
            if not re.search(r"\b(?:logs?|logged|log line|lines?|says|said)\b[^`.;]*$", before) \
                    and not re.match(r"[^`.;]*\bat (?:debug|info|warn|error)\b", after):
                continue
            quote = re.sub(r"\s+", " ", m.group(1))
            # a line's text, not a command, a setting, SQL or JSON
            if " " not in quote or "=" in quote or quote[0] in "{[" or \
                    re.match(r"[A-Z]{2,} |hookbridge[-._]|HOOKBRIDGE_|kill |kubectl |source: ",
                             quote):
                continue
            if any(n in quote for n in NOT_OURS) or quoted_matches(quote, formats):
                continue
            problems.append(f"{where(path, text, m.start())}: {quote!r} is printed by nothing")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ links


def test_every_link_between_the_docs_reaches_its_file_and_heading():
    """[text](file.md#anchor): the file exists and has that heading (as
    GitHub names its anchors), so a renamed section leaves no dead link."""
    def slug(heading):
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    pages = DOCS + [REPO / "migrations" / "README.md"]
    anchors = {}
    for p in pages:
        text = re.sub(r"```.*?```", "", p.read_text(), flags=re.S)
        anchors[p.resolve()] = {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
    problems = []
    for p in pages:
        text = p.read_text()
        for m in re.finditer(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", text):
            target, anchor = m.group(1), m.group(2)
            if re.match(r"[a-z]+:", target):
                continue
            dest = (p.parent / target).resolve() if target else p.resolve()
            at = where(p.relative_to(REPO), text, m.start())
            if not dest.exists():
                problems.append(f"{at}: {target} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors.get(dest, ()):
                problems.append(f"{at}: {dest.name} has no heading #{anchor}")
    assert not problems, "\n".join(problems)
