"""docs/PROTOCOL.md says what the message tables in protocol/ say, both ways.

The doc's own notation is what is read: a field is a backticked name at the start of a
comma-separated item, ``name?`` may be omitted, ``{...}`` right after a name lists the
fields of a map (``[{...}]`` of each map in a list), ``|nil`` after a type makes it
nullable, a type is ``str`` / ``int`` / ``float`` / ``bool`` / ``map`` / a bound
(``0–20000``, ``(0,10]``) / ``"a"|"b"`` (exactly these choices) / ``[x,y]`` (a point) /
``[...]`` (a list); anything else (``job id``, ``(below)``, a bare name) states no type.
Parenthesised text is commentary, except a result's trailing ``(+ `frame`)``.
"""
from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import pytest

from dragd.protocol import (DEFAULT_LIMITS, ERROR_CODES, EVENTS, JOB_TYPES, REQUESTS,
                            RESULTS)
from dragd.protocol.messages import DRAG_PARAMS, ENVELOPE, JOB_INFO, SESSION_INFO
from dragd.protocol.validate import (Bool, Float, FreeMap, Int, ListOf, Map, Nullable, Point,
                                     Str)

DOC = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text()

OPEN, CLOSE = "([{", ")]}"
# Interval bounds such as (0, 1] would unbalance the bracket counting below.
INTERVAL = re.compile(r"[(\[]\s*-?[\d.e]+\s*,\s*-?[\d.e]+\s*[)\]]")


def section(title: str) -> str:
    m = re.search(r"^## %s\b.*?(?=^## |\Z)" % re.escape(title), DOC, re.M | re.S)
    assert m, "docs/PROTOCOL.md has no section %r" % title
    return m.group(0)


def table(title: str, first_header: str) -> List[List[str]]:
    """The rows (cells, ``\\|`` unescaped) of the table whose header starts with
    ``first_header``, in the section ``title``."""
    rows, found = [], False
    for line in section(title).splitlines():
        if not line.startswith("|"):
            if found:
                break
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if not found:
            found = cells[0] == first_header
        elif not set(cells[0]) <= set("-: "):
            rows.append(cells)
    assert rows, "no %r table in section %r" % (first_header, title)
    return rows


def split_top(text: str, sep: str = ",") -> List[str]:
    """``text`` split at ``sep`` outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in INTERVAL.sub("RANGE", text):
        depth += (ch in OPEN) - (ch in CLOSE)
        if ch == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [s.strip() for s in out + [cur] if s.strip()]


def bracketed(text: str) -> str:
    """The inside of the bracket ``text`` starts with."""
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch in OPEN) - (ch in CLOSE)
        if depth == 0:
            return text[1:i]
    raise AssertionError("unbalanced: %r" % text)


def strip_comments(text: str) -> str:
    out, depth = "", 0
    for ch in text:
        depth += ch == "("
        if depth == 0:
            out += ch
        depth -= ch == ")" and depth > 0
    return out


def outer(text: str) -> str:
    """``text`` without what its brackets hold (a map's own fields are not its type)."""
    out, depth = "", 0
    for ch in text:
        depth -= ch in CLOSE
        if depth == 0:
            out += ch
        depth += ch in OPEN
    return out


@dataclass
class DocField:
    optional: bool
    kind: Optional[str]             # str int float bool map list point number choices
    nullable: bool
    choices: frozenset = frozenset()
    fields: Optional[Dict[str, "DocField"]] = None      # a map's own fields
    text: str = ""


def doc_field(rest: str, optional: bool) -> DocField:
    rest = INTERVAL.sub("RANGE", rest.strip())
    fields = None
    body = rest[1:] if rest.startswith("[{") else rest
    if body.startswith("{"):
        inner = bracketed(body)
        fields = doc_fields(inner) if "`" in inner else None      # not {name: int}
    bare = strip_comments(rest)
    word = re.match(r"\w*", bare).group(0)
    kind, choices = None, frozenset()
    if bare.startswith('"'):
        kind = "choices"
        alternatives = re.match(r'"[^"]*"(?:\s*\|\s*"[^"]*")*', bare).group(0)
        choices = frozenset(re.findall(r'"([^"]*)"', alternatives))
    elif bare.startswith("[x,y]"):
        kind = "point"
    elif bare.startswith("["):
        kind = "list"
    elif bare.startswith("{") or word == "map":
        kind = "map"
    elif word in ("str", "int", "float", "bool"):
        kind = word
    elif re.match(r"RANGE|[≥≤\d]", bare):
        kind = "number"
    return DocField(optional, kind, "|nil" in outer(bare), choices, fields, rest)


def doc_fields(text: str) -> Dict[str, DocField]:
    """``\\`a\\` str, \\`b?\\` {…}`` → {name: DocField}; ``–`` is no fields."""
    out: Dict[str, DocField] = {}
    for item in split_top(text):
        if item == "–":
            continue
        m = re.match(r"`(\w+)(\?)?`(.*)$", item, re.S)
        assert m, "not a `field`: %r" % item
        out[m.group(1)] = doc_field(m.group(3), bool(m.group(2)))
    return out


KINDS = {"str": (Str,), "int": (Int,), "float": (Float,), "bool": (Bool,),
         "map": (Map, FreeMap), "list": (ListOf,), "point": (Point,),
         "number": (Int, Float), "choices": (Str,)}


def compare(where: str, doc: Dict[str, DocField], spec: Dict) -> List[str]:
    """Every disagreement between the doc's fields and a table's ``{name: Field}``."""
    bad = []
    for name in sorted(set(doc) ^ set(spec)):
        bad.append("%s.%s: %s" % (where, name, "only in the doc" if name in doc
                                   else "missing from the doc"))
    for name in sorted(set(doc) & set(spec)):
        d, f, w = doc[name], spec[name], "%s.%s" % (where, name)
        if d.optional == f.required:
            bad.append("%s: the doc says %s" % (w, "optional" if d.optional else "required"))
        t = f.type
        nullable = isinstance(t, Nullable)
        inner = t.inner if nullable else t
        if d.kind is not None:
            if d.nullable != nullable:
                bad.append("%s: the doc says %snullable" % (w, "" if d.nullable else "not "))
            if not isinstance(inner, KINDS[d.kind]):
                bad.append("%s: the doc says %s, the code %s" % (w, d.kind, type(inner).__name__))
            elif d.kind == "choices" and d.choices != frozenset(inner.choices or ()):
                bad.append("%s: the doc's choices %s, the code's %s"
                           % (w, sorted(d.choices), sorted(inner.choices or ())))
        # A map whose fields the doc lists elsewhere ("job info", "(below)") is
        # compared there.
        if d.fields is not None:
            sub = inner.item if isinstance(inner, ListOf) else inner
            if isinstance(sub, Map):
                bad += compare(w, d.fields, sub.fields)
            else:
                bad.append("%s: the doc lists fields of a map, the code has a %s"
                           % (w, type(sub).__name__))
    return bad


def frames_compare(where: str, doc: Dict[str, DocField], spec: Dict) -> List[str]:
    bad = ["%s frame %s: %s" % (where, n, "only in the doc" if n in doc else "missing from "
                                "the doc") for n in sorted(set(doc) ^ set(spec))]
    for n in sorted(set(doc) & set(spec)):
        if doc[n].optional == spec[n].required:
            bad.append("%s frame %s: the doc says %s" % (
                where, n, "optional" if doc[n].optional else "required"))
        ch = re.search(r"([\d/]+) ch\b", doc[n].text)
        if ch and tuple(map(int, ch.group(1).split("/"))) != spec[n].channels:
            bad.append("%s frame %s: the doc says %s channels, the code %s"
                       % (where, n, ch.group(1), spec[n].channels))
    return bad


def names(cell: str) -> List[str]:
    return re.findall(r"`(\w+)`", cell)


def test_envelope():
    assert {names(r[0])[0] for r in table("Frames", "key")} == set(ENVELOPE)


def test_immediate_requests_and_jobs():
    flow = section("Flow")
    immediate = re.search(r"\*\*Immediate requests\*\* — (.*?) —", flow, re.S).group(1)
    jobs = re.search(r"\*\*Jobs\*\* — (.*?) —", flow, re.S).group(1)
    assert set(names(jobs)) == JOB_TYPES
    assert set(names(immediate)) == set(REQUESTS) - JOB_TYPES


def test_requests_and_results():
    rows = table("Requests", "request")
    assert [names(r[0])[0] for r in rows] == list(REQUESTS) == list(RESULTS)
    bad = []
    for name, fields, frames, result in rows:
        t = names(name)[0]
        bad += compare(t, doc_fields(fields), REQUESTS[t].fields)
        bad += frames_compare(t, doc_fields(frames), REQUESTS[t].frames)
        plus = re.search(r"\s*\(\+ ([^()]*)\)\s*$", result)
        result_frames = {}
        if plus:
            result = result[:plus.start()]
            result_frames = {n: doc_field(r, bool(q)) for n, q, r in
                             re.findall(r"`(\w+)(\?)?`([^`]*)", plus.group(1))}
        bad += compare("%s result" % t, doc_fields(result), RESULTS[t].fields)
        bad += frames_compare("%s result" % t, result_frames, RESULTS[t].frames)
    assert not bad, "\n".join(bad)


def test_drag_params():
    bad, seen = [], set()
    for keys, kind, default in table("Requests", "key"):
        for key in names(keys):
            seen.add(key)
            f = DRAG_PARAMS.fields.get(key)
            if f is None:
                bad.append("drag.params.%s: only in the doc" % key)
                continue
            bad += compare("drag.params", {key: doc_field(kind, True)}, {key: f})
            lit = re.match(r'nil|"[^"]*"|-?[\d.]+(?:e-?\d+)?|\w+', default).group(0)
            doc_default = (None if lit == "nil" else lit.strip('"') if lit[0] == '"' or
                           lit.isalpha() else float(lit))
            if doc_default != f.default:
                bad.append("drag.params.%s: the doc's default %r, the code's %r"
                           % (key, doc_default, f.default))
    bad += ["drag.params.%s: missing from the doc" % k for k in DRAG_PARAMS.fields
            if k not in seen]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("what,spec", [("Job info", JOB_INFO), ("Session info", SESSION_INFO)])
def test_job_and_session_info(what, spec):
    inner = re.search(r"%s: `\{(.*?)\}`" % what, section("Requests")).group(1)
    doc = {n.rstrip("?"): DocField(n.endswith("?"), None, False)
           for n in (s.strip() for s in inner.split(","))}
    bad = compare(what, doc, spec.fields)
    assert not bad, "\n".join(bad)


def test_events():
    rows = table("Events", "type")
    assert {names(r[0])[0] for r in rows} == set(EVENTS)
    bad = []
    for name, fields, frames in rows:
        t = names(name)[0]
        bad += compare(t, doc_fields(fields), EVENTS[t].fields)
        bad += frames_compare(t, doc_fields(frames), EVENTS[t].frames)
    assert not bad, "\n".join(bad)


def test_error_codes():
    documented = [n for r in table("Error codes", "code") for n in names(r[0])]
    assert sorted(documented) == sorted(ERROR_CODES)


def test_limits():
    limits_list = section("Limits").split("\n\n")[1].split(". ")[0]
    units = {"": 1, "Ki": 1 << 10, "KiB": 1 << 10, "Mi": 1 << 20, "MiB": 1 << 20}
    doc = {n: (int(v) * units[u] if v else None) for n, v, u in
           re.findall(r"`(\w+)`(?: (\d+)(?: (KiB|Ki|MiB|Mi)\b)?)?", limits_list)}
    limits = DEFAULT_LIMITS.to_dict()
    # The daemon adds its session memory budget to the limits it reports.
    assert set(doc) == set(limits) | {"session_budget_bytes"}
    assert {n: v for n, v in doc.items() if v is not None} == \
        {n: limits[n] for n, v in doc.items() if v is not None}
