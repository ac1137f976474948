"""Every command the docs give runs as written: the shell commands of README.md, docs/*.md and
docs/operations/*.md are checked against the real parsers (``batch``, ``analytics``, Airflow's
CLI), the Makefile's targets and variables, and a few cheap ones run for real.

Conventions the pages follow (and this test holds them to):

* A command in a ``bash``/``sh`` block is complete and copy-pasteable: example values, never a
  placeholder; it is parsed exactly as the shell would split it.
* A command quoted in prose (`` `...` ``) with flags is complete too, unless it holds a
  placeholder: ``<...>``, ``…`` or a lone capital letter standing for a value (``--day D``).
  Without flags (``.venv/bin/python -m batch retrain``) it names a program or a job. Either way
  only its names are checked then: the module, the subcommand, each ``--flag``.
* The project's Python is ``.venv/bin/python``: no page says ``python -m``.
* A page that gives ``batch`` or ``analytics`` commands says they need the stack's
  ``USERSIGNALS_REGISTRY``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs" / "operations").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
PYTHON = ".venv/bin/python"
ENTRY_POINTS = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
PLACEHOLDER = re.compile(r"<[^<>\n]+>|…|\.\.\.")
# Command substitutions the pages use, and the example value the check puts in their place.
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
SUBSTITUTIONS = {"$(date -u +%F)": NOW.date().isoformat(), "$(date -u +%FT%T+00:00)": NOW.isoformat()}
AIRFLOW_PYTHON = REPO / ".venv-airflow" / "bin" / "python"
# infra.airflow's own commands; any other is handed to Airflow's CLI.
AIRFLOW_OWN = {"env", "standalone", "password"}


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    argv: tuple[str, ...]
    fenced: bool  # from a shell block (complete) or quoted in prose (complete unless a placeholder)

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {shlex.join(self.argv)}"

    @property
    def kind(self) -> str | None:
        """python (.venv/bin/python or a bare python), entry (.venv/bin/<entry point>), make, or None."""
        head = self.argv[0]
        if head in (PYTHON, "python", "python3"):
            return "python"
        if head.startswith(".venv/bin/"):
            return "entry"
        return "make" if head == "make" else None

    @property
    def placeholders(self) -> list[str]:
        return [t for t in self.argv[1:] if is_placeholder(t)]

    @property
    def complete(self) -> bool:
        """Whether it must parse as it stands (else: a reference to a program, job or flag)."""
        args = self.argv[3:] if self.kind == "python" and self.argv[1:2] == ("-m",) else self.argv[1:]
        return self.fenced or (not self.placeholders and any(t.startswith("-") for t in args))


def is_placeholder(token: str) -> bool:
    return bool(PLACEHOLDER.search(token) or re.fullmatch(r"[A-Z]", token))


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) of every shell block; continuation lines joined."""
    out, fence, pending = [], None, None
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip()
            continue
        if fence not in SHELL_FENCES:
            continue
        if pending is not None:
            pending = (pending[0], pending[1] + " " + stripped)
        else:
            pending = (n, stripped)
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1])
            continue
        out.append(pending)
        pending = None
    return out


def prose_spans(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every inline code span outside code blocks and HTML comments."""
    out, in_fence = [], False
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    lines = text.splitlines()
    kept = []
    for line in lines:
        if line.strip().startswith("```"):
            in_fence = not in_fence
            kept.append("")
            continue
        kept.append("" if in_fence else line)
    prose = "\n".join(kept)
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        out.append((prose.count("\n", 0, m.start()) + 1, m.group(1).replace("\n", " ")))
    return out


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at |, &&, ||, ;), comments and leading
    NAME=value assignments dropped."""
    lex = shlex.shlex(line, posix=True, punctuation_chars="|&;")
    lex.whitespace_split = True
    commands, current = [], []
    for token in lex:
        if token and set(token) <= set("|&;"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for argv in commands:
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out


def substitute(line: str) -> str:
    """Example values for known command substitutions; each ``<...>`` placeholder made one word
    (``<the run's --as-of>`` -> ``<the_run_s_--as-of>``: prose, not shell quoting)."""
    for expr, value in SUBSTITUTIONS.items():
        line = line.replace(expr, value)
    return re.sub(r"<[^<>\n]+>", lambda m: "<" + re.sub(r"[\s'\"]+", "_", m.group(0)[1:-1]) + ">", line)


def page_commands(path: Path) -> list[Command]:
    text = path.read_text()
    page = path.relative_to(REPO).as_posix()
    found = []
    for fenced, lines in ((True, shell_lines(text)), (False, prose_spans(text))):
        for n, line in lines:
            try:
                commands = simple_commands(substitute(line))
            except ValueError as exc:  # unbalanced quotes
                if fenced:
                    raise ValueError(f"{page}:{n}: {line!r} is not a shell line: {exc}") from None
                continue
            for argv in commands:
                command = Command(page, n, tuple(argv), fenced)
                if command.kind:
                    found.append(command)
    return found


COMMANDS = [c for p in PAGES for c in page_commands(p)]


def parser_of(module_or_entry: str) -> argparse.ArgumentParser | None:
    if module_or_entry == "batch":
        from batch.__main__ import parser
    elif module_or_entry == "analytics":
        from analytics.__main__ import parser
    else:
        return None
    return parser()


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """None when ``argv`` parses (or asks for --help); else what argparse said."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def names_problem(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """For a command with placeholders: its subcommand (unless a placeholder) and flags exist."""
    target = parser
    if argv and not argv[0].startswith("-") and not is_placeholder(argv[0]):
        target = subparser(parser, argv[0])
        if target is None:
            return f"no subcommand {argv[0]!r}"
    unknown = [t.split("=")[0] for t in argv if t.startswith("--") and t.split("=")[0] not in target._option_string_actions]
    return f"no such flags: {unknown}" if unknown else None


def airflow_problems(argvs: list[list[str]]) -> list[str | None]:
    """Each argv checked by Airflow's own CLI parser, in its environment (one process for all)."""
    script = (
        "import contextlib, io, json, sys\n"
        "from airflow.cli.cli_parser import get_parser\n"
        "out = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
        "            get_parser().parse_args(argv)\n"
        "        out.append(None)\n"
        "    except SystemExit as exc:\n"
        "        out.append(None if exc.code == 0 else err.getvalue().strip().splitlines()[-1])\n"
        "print(json.dumps(out))\n")
    with tempfile.TemporaryDirectory() as home:  # Airflow writes its logs folder under AIRFLOW_HOME
        proc = subprocess.run([str(AIRFLOW_PYTHON), "-c", script, json.dumps(argvs)], capture_output=True, text=True,
                              env={**os.environ, "AIRFLOW_HOME": home}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def problem(command: Command) -> str | None:
    """What is wrong with a documented python or entry-point command, or None."""
    argv = list(command.argv)
    if command.kind == "python":
        if argv[0] != PYTHON:
            return f"use the project's Python, {PYTHON}, not {argv[0]!r}"
        if argv[1:2] == ["-c"]:
            try:
                compile(argv[2], str(command), "exec")
            except SyntaxError as exc:
                return f"python -c: {exc}"
            return None
        if len(argv) == 1 and not command.fenced:  # the interpreter named in prose
            return None
        if argv[1:2] != ["-m"] or len(argv) < 3:
            return "expected .venv/bin/python -m <module> or -c <code>"
        module, args = argv[2], argv[3:]
        if importlib.util.find_spec(module) is None:
            return f"no module {module!r}"
    else:
        entry, args = argv[0].removeprefix(".venv/bin/"), argv[1:]
        if entry not in ENTRY_POINTS:
            return f"{entry!r} is not an entry point of pyproject.toml (those are {sorted(ENTRY_POINTS)})"
        module = entry
    if command.fenced and command.placeholders:
        return f"placeholders {command.placeholders} in a shell block: write an example value"
    if module == "infra.airflow":
        return None  # checked with Airflow's parser, all at once (test_airflow_commands_parse)
    parser = parser_of(module)
    if parser is None:
        return None if not args or not command.complete else f"no parser known for {module!r}: add it to parser_of()"
    if not command.complete:
        return names_problem(parser, args)
    return parse(parser, args)


def makefile_variables() -> set[str]:
    return set(re.findall(r"\$\(([A-Z][A-Z0-9_]*)\)", (REPO / "Makefile").read_text()))


# --- the extraction itself -------------------------------------------------------------------

def test_commands_are_read_as_the_shell_splits_them():
    text = ("Run `.venv/bin/python -m batch skew --day D` daily.\n<!-- `python -m infra.docs` -->\n"
            "```bash\nUSERSIGNALS_REGISTRY=r.toml .venv/bin/python -m batch bootstrap \\\n"
            "    --datasets shares --days 30   # a comment: make up\n"
            "make k8s-render OVERLAY=example | kubectl apply -f - && make down\n```\n"
            "```json\n{\"make\": 1}\n```\n")
    page = REPO / "docs" / "operations" / "_example.md"
    try:
        page.write_text(text)
        got = [(c.line, c.argv, c.fenced, c.kind) for c in page_commands(page)]
    finally:
        page.unlink()
    assert got == [
        (4, (".venv/bin/python", "-m", "batch", "bootstrap", "--datasets", "shares", "--days", "30"), True, "python"),
        (6, ("make", "k8s-render", "OVERLAY=example"), True, "make"),
        (6, ("make", "down"), True, "make"),
        (1, (".venv/bin/python", "-m", "batch", "skew", "--day", "D"), False, "python"),
    ]


def test_a_command_that_does_not_parse_is_reported_with_argparses_words():
    bootstrap = Command("p.md", 1, (PYTHON, "-m", "batch", "bootstrap", "--datasets", "shares", "--days", "30"), True)
    assert problem(bootstrap) == "python -m batch bootstrap: error: the following arguments are required: --as-of"
    bare = Command("p.md", 1, ("python", "-m", "batch", "publish-model"), False)
    assert problem(bare) == "use the project's Python, .venv/bin/python, not 'python'"
    prose = Command("p.md", 1, (PYTHON, "-m", "batch", "select", "--experiment", "<name>", "--rulez", "dwell"), False)
    assert problem(prose) == "no such flags: ['--rulez']"
    fenced = Command("p.md", 1, (PYTHON, "-m", "batch", "delete-user", "<user>"), True)
    assert problem(fenced) == "placeholders ['<user>'] in a shell block: write an example value"
    assert problem(Command("p.md", 1, (PYTHON, "-m", "batch", "retrain", "--help"), True)) is None
    assert problem(Command("p.md", 1, (PYTHON, "-m", "batch", "retrain"), False)) is None   # names the job
    assert problem(Command("p.md", 1, (PYTHON, "-m", "batch", "retrian"), False)) == "no subcommand 'retrian'"
    assert problem(Command("p.md", 1, (".venv/bin/analytics",), False)) is None
    assert problem(Command("p.md", 1, (".venv/bin/analytics",), True)).endswith(
        "the following arguments are required: cmd")


def test_the_pages_give_commands_of_every_kind():
    kinds = {(c.kind, c.argv[2] if c.kind == "python" and len(c.argv) > 2 else c.argv[0]) for c in COMMANDS}
    # Anchors: an extractor that silently found nothing would pass every test below.
    assert {("python", "batch"), ("python", "infra.airflow"), ("entry", ".venv/bin/analytics"),
            ("make", "make")} <= kinds


# --- the pages ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [c for c in COMMANDS if c.kind in ("python", "entry")], ids=str)
def test_documented_command_parses(command):
    assert problem(command) is None, str(command)


def test_airflow_commands_parse():
    """``.venv/bin/python -m infra.airflow <airflow command>`` hands the command to Airflow's CLI:
    checked by that CLI's own parser."""
    commands = [c for c in COMMANDS if c.kind == "python" and c.argv[2:3] == ("infra.airflow",)]
    handed = [c for c in commands if c.argv[3:4] and c.argv[3] not in AIRFLOW_OWN and not c.placeholders]
    assert handed, "no Airflow command in the docs: this test checks nothing"
    problems = airflow_problems([list(c.argv[3:]) for c in handed])
    assert [(str(c), p) for c, p in zip(handed, problems) if p] == []
    bad = airflow_problems([["dags", "tset", "bootstrap_dataset"]])
    assert "invalid choice: 'tset'" in bad[0]


def test_documented_make_commands_name_real_targets_and_variables():
    variables = makefile_variables()
    wrong = []
    for command in {c.argv: c for c in COMMANDS if c.kind == "make"}.values():
        targets = [a for a in command.argv[1:] if "=" not in a]
        assigned = [a.split("=")[0] for a in command.argv[1:] if "=" in a]
        wrong += [f"{command}: variable {v} is not read by the Makefile" for v in assigned if v not in variables]
        if command.placeholders:
            wrong.append(f"{command}: placeholders {command.placeholders}")
            continue
        # A dry run: make says "No rule to make target" for a target that is not there.
        proc = subprocess.run(["make", "-n", "-C", str(REPO), *targets, *[a for a in command.argv[1:] if "=" in a]],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            wrong.append(f"{command}: {proc.stderr.strip()}")
    assert wrong == []


def test_pages_with_batch_or_analytics_commands_say_which_registry():
    """Those commands read the registry the stack reads only when USERSIGNALS_REGISTRY is the
    same in their shell."""
    pages = {c.page for c in COMMANDS if c.fenced and (c.argv[2:3] == ("batch",) or c.argv[0] == ".venv/bin/analytics")}
    assert pages, "no batch or analytics command found"
    assert sorted(p for p in pages if "USERSIGNALS_REGISTRY" not in (REPO / p).read_text()) == []


# Documented commands that read nothing but the code: run as written.
def cheap(command: Command) -> bool:
    argv = command.argv
    return command.fenced and ("--help" in argv or argv[:2] in ((".venv/bin/analytics", "list"),
                                                                (".venv/bin/analytics", "show")))


@pytest.mark.parametrize("argv", sorted({c.argv for c in COMMANDS if cheap(c)}
                                        | {(PYTHON, "-m", "batch", "--help"), (".venv/bin/analytics", "--help")}),
                         ids=shlex.join)
def test_cheap_documented_commands_run(argv):
    proc = subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "printed nothing"
