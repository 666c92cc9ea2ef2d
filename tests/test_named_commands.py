"""Every `dragd …` command the project tells a user to run is one the CLI accepts.

Commands are collected from the README and docs/*.md (backticked spans and the lines of
shell code blocks) and from every string in the code that reaches a user (help texts,
error sentences, the protocol's sentence table, the plug-ins' wording). Each is parsed
with the real argument parser; a model named by a command must be one the registry knows.
"""
from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from dragd.daemon.cli import build_parser
from dragd.daemon.model import registry

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("daemon", "protocol", "plugin_common", "gimp_plugin", "krita_plugin")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Words after "dragd" in prose that are not commands ("the dragd daemon", "dragd release").
PROSE = {"daemon", "release", "protocol", "safetensors", "wire", "to", "reads", "plug-in",
         "plug-ins", "training", "native", "model", "loads", "listens", "format", "conversion",
         "contributors", "brings", "and", "install", "client", "is", "was", "does", "never",
         "keeps", "runs", "uses", "sees", "answers", "itself", "session", "sessions"}
#: Where a command ends inside a sentence.
STOP_WORDS = {"or", "and", "to", "then", "in", "for", "on", "—", "–", "(", "if", "when", "first",
              "again", "instead", "from", "with", "so", "before", "after", "at"}
PLACEHOLDER = re.compile(r"^(%[sdr]|\{[^}]*\}|[A-Z][A-Z0-9_.]*|<[^>]+>|\.\.\.|…)$")


def _from_text(text: str) -> list[str]:
    """`dragd …` commands in running text: each ends at punctuation or a stop word."""
    out = []
    for m in re.finditer(r"(?<![\w/.-])dragd(?=((?: [^\s]+)+))", text.replace("*", "")):
        words = []
        for w in m.group(1).split():
            if w.startswith("(") or w in STOP_WORDS:
                break
            core = w.rstrip(",;:)\"'`?!.")
            if w[len(core):].startswith("..."):
                words += [core, "…"] if core else ["…"]
                break
            if core.endswith("?") or w[len(core):].startswith("?"):
                break
            if core:
                words.append(core)
            if core != w:
                break
        first = words[0].strip(".,;:)…") if words else ""
        if first and first not in PROSE and (first[0].islower() or first.startswith("-")):
            out.append("dragd " + " ".join(words))
    return out


def _from_markdown(text: str) -> list[str]:
    out = []
    for span in re.findall(r"`([^`\n]+)`", text):
        out += [c for c in _shell_commands(span)]
    in_sh = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_sh = line.strip() in ("```sh", "```bash", "```console")
            continue
        if in_sh:
            out += _shell_commands(line.split(" #")[0])
    return out


def _shell_commands(line: str) -> list[str]:
    out = []
    for part in re.split(r"&&|;|\|", line):
        words = part.split()
        if words and words[0].endswith("dragd") and words[0].split("/")[-1] == "dragd":
            if len(words) > 1 and words[1] not in PROSE:
                out.append(" ".join(["dragd", *words[1:]]))
    return out


def _strings_in_code() -> list[tuple[str, str]]:
    found = []
    for folder in CODE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and "dragd " in node.value:
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    found += [(where, c) for c in _from_text(node.value)]
    return found


def named_commands() -> list[tuple[str, str]]:
    found = _strings_in_code()
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        found += [(doc.relative_to(ROOT).as_posix(), c) for c in _from_markdown(text)]
    return sorted(set(found))


def _candidates(words: list[str]):
    """The command with its placeholders (FILE, NAME, %s, {x}) filled in a few plausible ways;
    an option named last without its value (`dragd serve --memory-budget-gb`) gets one too."""
    for fill in ("1", "cpu", "x.png"):
        filled = [fill if PLACEHOLDER.match(w) else w for w in words]
        yield filled
        if filled and filled[-1].startswith("--"):
            yield filled + [fill]


class _Refused(Exception):
    pass


def _parse(parser, words: list[str]):
    def refuse(message):
        raise _Refused(message)
    for p in _all_parsers(parser):
        p.error = refuse      # argparse would print usage and exit
    try:
        return parser.parse_args(words)
    except SystemExit as exc:        # --help
        if exc.code:
            raise _Refused("exit %s" % exc.code)
        return None


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        for sub in (getattr(action, "choices", None) or {}).values() if hasattr(action, "_name_parser_map") else ():
            yield from _all_parsers(sub)


def _unknown_options(words: list[str]) -> list[str]:
    """Options that the (sub)command the words name does not have."""
    parser = build_parser()
    for w in words:
        subs = next((a for a in parser._actions if hasattr(a, "_name_parser_map")), None)
        if subs is None or w not in subs.choices:
            break
        parser = subs.choices[w]
    known = {o for a in parser._actions for o in a.option_strings}
    return [w for w in words if w.startswith("-") and w.split("=")[0] not in known]


def parse_error(command: str) -> str | None:
    """None if the CLI accepts `command`. A command that names a command but leaves out its
    required arguments (`dragd edit`, "run dragd keys") refers to it and counts as real; a
    command group needs its action (`dragd models list`) unless "…" says more follows."""
    words = [w for w in shlex.split(command)[1:]]
    ellipsis = bool(words) and words[-1] in ("…", "...")
    if ellipsis:
        words = words[:-1]
    errors = []
    for attempt in _candidates(words):
        try:
            args = _parse(build_parser(), attempt)
        except _Refused as exc:
            msg = str(exc)
            if msg.startswith("the following arguments are required") and (
                    ellipsis or "ACTION" not in msg) and not _unknown_options(attempt):
                return None
            errors.append(msg)
            continue
        return None if args is None else _model_error(words, args)
    return "the CLI refuses it: " + errors[0]


def _model_error(words: list[str], args) -> str | None:
    """A model named literally (not a placeholder or a file) must be a registry name."""
    name = getattr(args, "name", None) if getattr(args, "models_command", None) == "fetch" else None
    name = name or getattr(args, "model", None)
    if name is None or "model" not in " ".join(words) and name == "default":
        return None
    literal = next((w for w in words if w == name), None)
    if literal is None or PLACEHOLDER.match(literal) or "/" in name or Path(name).suffix:
        return None
    known = set(registry.REGISTRY) | {"default"}
    return None if name in known else f"no model called {name!r} (known: {', '.join(sorted(known))})"


COMMANDS = named_commands()


def test_commands_are_found():
    """The collector itself sees the commands the README opens with and the error tables' ones."""
    cmds = {c for _, c in COMMANDS}
    assert "dragd demo -o demo.png" in cmds
    assert any(c.startswith("dragd keys init") for c in cmds)
    assert any(c.startswith("dragd models list") for c in cmds)
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{w} {c}" for w, c in COMMANDS])
def test_named_command_is_real(where, command):
    err = parse_error(command)
    assert err is None, f"{where}: `{command}`: {err}"


@pytest.mark.parametrize("command", ["dragd keys --init", "dragd keys --allow FILE", "dragd models",
                                     "dragd load MODEL", "dragd models fetch stylegan2-ffhq-512",
                                     "dragd serve --model stylegan2-ffhq-512 --device cuda"])
def test_a_wrong_command_is_caught(command):
    assert parse_error(command) is not None


def test_commands_in_sentences_end_where_the_sentence_does():
    text = "start it with: dragd serve, or run dragd keys allow FILE (on the daemon's machine)."
    assert _from_text(text) == ["dragd serve", "dragd keys allow FILE"]
    assert _from_text("the dragd daemon is not reachable") == []
