"""Helpers for the operations tests: the configuration reference as the
binaries print it, and the Kubernetes manifests as kustomize renders them.

The kubectl used is $HOOKBRIDGE_KUBECTL, else `kubectl` on PATH (Debian 12's
kubernetes-client is kubectl 1.20 with its old built-in kustomize; the
manifests keep to what it understands, and newer kubectl renders them too).
"""
import functools
import os
import re
import shutil
import subprocess

import yaml

from .procs import BIN, REPO

KUBECTL = os.environ.get("HOOKBRIDGE_KUBECTL") or shutil.which("kubectl") or "kubectl"


@functools.lru_cache(maxsize=None)
def reference_text(program="hookbridge-dispatcher"):
    r = subprocess.run([str(BIN / program), "--config-reference"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, f"{program} --config-reference exited {r.returncode}: {r.stderr}"
    return r.stdout


def parse_reference(text):
    """{variable: {"flag", "type", "default", "programs", "description"}} from
    the Markdown table (`(empty)` and a blank cell are an empty default)."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip()[1:-1].split("|")]
        var, flag, typ, default, programs = cells[:5]
        desc = "|".join(cells[5:]).strip()
        default = default.strip("`")
        out[var.strip("`")] = {
            "flag": flag.strip("`"), "type": typ,
            "default": "" if default == "(empty)" else default,
            "programs": [p.strip() for p in programs.split(",") if p.strip()],
            "description": desc,
        }
    return out


def config_reference(program="hookbridge-dispatcher"):
    return parse_reference(reference_text(program))


def default_http_port():
    listen = config_reference()["HOOKBRIDGE_HTTP_LISTEN"]["default"]
    return int(listen.rsplit(":", 1)[1])


def duration_seconds(text):
    """The programs' duration syntax: 250ms, 5s, 2m, 1h, 1d or bare milliseconds."""
    m = re.fullmatch(r"([0-9.]+)(ms|s|m|h|d)?", text.strip())
    assert m, f"not a duration: {text!r}"
    scale = {None: 0.001, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return float(m.group(1)) * scale


@functools.lru_cache(maxsize=None)
def _render(tree):
    r = subprocess.run([KUBECTL, "kustomize", str(REPO / tree)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"{KUBECTL} kustomize {tree} failed:\n{r.stderr}"
    return r.stdout


def rendered(tree):
    """The objects `kubectl kustomize <tree>` renders (fresh copies)."""
    return [o for o in yaml.safe_load_all(_render(tree)) if o]
