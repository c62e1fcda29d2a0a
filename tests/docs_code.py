"""The code blocks of README.md and docs/*.md, and a dry run of every shell command they show.

A block may be preceded by an HTML comment that tells the tests what it is:

- ``<!-- docs-test: file=PATH -->``: a file the reader writes (a CSV, a YAML, a Python module); the tests
  write it into their working folder before the other blocks run.
- ``<!-- docs-test: id=NAME -->``: a Python block that a named test runs with its own assertions.
- ``<!-- docs-test: part-of=PATH -->``: a YAML excerpt of a file in the repository; every value it shows
  must be the file's.
- ``<!-- docs-test: skip REASON -->``: not run here; the reason is shown as the test's skip reason.

Every other Python block runs, in page order, in one namespace per page. A shell command is checked
without training: the program must exist, its arguments must parse with the program's own parser
(accelerate's for ``accelerate launch``), and a recipe's or ``multimodal-train``'s config, with the
command's overrides, must pass the config checks a real run starts with. Programs outside the project
(curl, srun, ...) are skipped with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import re
import shlex
from dataclasses import dataclass
from typing import Any, Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                               if f.endswith(".md"))
FENCE = re.compile(r"(?:<!-- docs-test: (?P<marker>.*?) -->\n)?^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```$",
                   re.S | re.M)
LANGUAGES = {"python", "bash", "yaml", "csv", "text"}
# Programs the docs show that are not the project's: why a test does not run them.
EXTERNAL = {
    "curl": "talks to a running server (tests/multimodal/deploy/test_main_job.py queries one with curl)",
    "srun": "needs a SLURM cluster", "scontrol": "needs a SLURM cluster",
    "ruff": "the linter, not a documented behaviour", "source": "a shell built-in (activates the venv)",
    "tensorboard": "a viewer for logs", "export": "sets a shell variable",
}


@dataclass
class Block:
    """One fenced code block of a page."""

    page: str
    line: int
    lang: str
    code: str
    marker: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def option(self, key: str) -> Optional[str]:
        """The value of ``key=`` in the block's marker, if any."""
        m = re.match(rf"{key}=(\S+)", self.marker)
        return m.group(1) if m else None

    @property
    def skip_reason(self) -> Optional[str]:
        return self.marker[5:].strip() if self.marker.startswith("skip ") else None


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of `page` (relative to the repository root), with their markers."""
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    return [Block(page, text.count("\n", 0, m.start("code")), m.group("lang"), m.group("code"), m.group("marker") or "")
            for m in FENCE.finditer(text)]


def all_blocks() -> list[Block]:
    """Every page's blocks."""
    return [b for page in PAGES for b in blocks(page)]


def block_by_id(name: str) -> Block:
    """The one block marked ``id=name``."""
    (found,) = [b for b in all_blocks() if b.option("id") == name]
    return found


# ------------------------------------------------------------------------------------------ shell commands
@dataclass
class Command:
    """One shell command of a block: where it is and its words (environment assignments removed)."""

    where: str
    words: list[str]
    env: dict[str, str]

    @property
    def text(self) -> str:
        return " ".join(self.words)


def commands(block: Block, variables: dict[str, str]) -> list[Command]:
    """The commands of a shell block: continuation lines joined, comments dropped, ``A && B`` split,
    ``$VAR`` expanded from earlier ``VAR=value`` lines (and `variables`)."""
    out: list[Command] = []
    joined = block.code.replace("\\\n", " ")
    for offset, line in enumerate(joined.splitlines()):
        for part in line.split("&&"):
            for name, value in variables.items():
                part = part.replace(f"${{{name}}}", value).replace(f"${name}", value)
            words = shlex.split(part, comments=True)
            env = {}
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                key, value = words.pop(0).split("=", 1)
                env[key] = value
            if not words:
                variables.update(env)  # S=outputs/...: a shell variable for the lines below
                continue
            out.append(Command(f"{block.where}+{offset}", words, env))
    return out


class Parsed(Exception):
    """Raised by the patched `parse_args`: the command line parsed; nothing else runs."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


@contextlib.contextmanager
def parse_only():
    """Make every `argparse.ArgumentParser.parse_args` stop the program right after parsing."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def console_scripts() -> dict[str, str]:
    """``multimodal-*`` command -> "module:function", from pyproject.toml."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def _entry(target: str) -> Any:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _parse_with(function: Any, argv: list[str]) -> argparse.Namespace:
    """`function`'s command line, parsed by its own parser (the function stops right after parsing)."""
    with parse_only():
        try:
            function(argv)
        except Parsed as done:
            return done.namespace
        except SystemExit as exit_:  # --help printed the options and exited
            assert exit_.code == 0 and "--help" in argv, f"exit {exit_.code}"
            return argparse.Namespace(help=True)
    raise AssertionError(f"{function.__module__}.{function.__name__} returned without parsing its arguments")


def check_recipe(script: str, argv: list[str]) -> str:
    """A recipe's command line: its config and overrides go through `load_config`'s checks."""
    from multimodal.config.loading import parse_cli

    path = os.path.join(ROOT, script)
    assert os.path.isfile(path), f"{script} does not exist"
    spec = importlib.util.spec_from_file_location(f"docs_recipe_{os.path.basename(script)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = parse_cli([a for a in argv if a != "--debug"], module.DEFAULT_CONFIG)
    return f"recipe {script}: task {cfg.model.task}, config checked"


def check_train(argv: list[str]) -> str:
    """``multimodal-train``: parsed by its parser, and the config it builds (column inference included) checked."""
    from multimodal.train import build_config, parser

    args = parser().parse_args(argv)
    if args.list_recipes:
        return "multimodal-train --list-recipes"
    cfg, _ = build_config(args)
    return f"multimodal-train: task {cfg.model.task}, config checked"


def check_python(words: list[str]) -> str:
    """``python [-m module | script | -c code] ...``."""
    if words[1] == "-m":
        module, argv = words[2], words[3:]
        if module == "pytest":
            return "skip: the test suite itself"
        if module == "multimodal.train":
            return check_train(argv)
        targets = {t.split(":")[0]: t for t in console_scripts().values()}
        assert module in targets, f"python -m {module}: not a documented command module"
        return f"{module}: parsed {_parse_with(_entry(targets[module]), argv)}"
    if words[1] == "-c":
        exec(compile(words[2], "<docs python -c>", "exec"), {"__name__": "docs_python_c"})
        return "python -c ran"
    script, argv = words[1], words[2:]
    if script.startswith("recipes/"):
        return check_recipe(script, argv)
    assert os.path.isfile(os.path.join(ROOT, script)), f"{script} does not exist"
    return f"skip: {script} is a benchmark script (measurements are run by hand, see BENCHMARKS.md)"


def check_accelerate(words: list[str]) -> str:
    """``accelerate launch [launcher options] TARGET ...``: accelerate's own parser, then the target."""
    from accelerate.commands.launch import launch_command_parser

    if words[1] != "launch":
        return f"skip: accelerate {words[1]} configures the user's accelerate set-up"
    args = launch_command_parser().parse_args(words[2:])
    if args.config_file:
        assert os.path.isfile(args.config_file), f"{args.config_file} does not exist"
    if args.module:
        return check_python(["python", "-m", args.training_script, *args.training_script_args])
    return check_recipe(args.training_script, args.training_script_args)


def check_pip(words: list[str]) -> str:
    """``pip install``: the constraints file and the extras it names exist."""
    assert words[1] == "install", words
    if "-c" in words:
        assert os.path.isfile(words[words.index("-c") + 1])
    extras = set(re.findall(r"\[(\w+)\]", " ".join(words)))
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        known = set(tomllib.load(f)["project"]["optional-dependencies"])
    assert extras <= known, f"unknown extras {extras - known}"
    return "skip: installs packages (the default line is what .ci/run runs; the CPU index is not reachable here)"


def check_command(command: Command) -> str:
    """Dry-run one command; returns what was checked, or ``skip: reason``."""
    words = list(command.words)
    program = os.path.basename(words[0])
    if program in EXTERNAL:
        return f"skip: {program} {EXTERNAL[program]}"
    if program in ("python", "python3"):
        if words[1:3] == ["-m", "venv"]:
            return "skip: creates the virtual environment"
        return check_python(words)
    if program == "pip":
        return check_pip(words)
    if program == "accelerate":
        return check_accelerate(words)
    if program == "bash":
        assert os.path.isfile(os.path.join(ROOT, words[1])), words[1]
        return f"skip: {words[1]} reinstalls everything from nothing (CI runs it)"
    if program == "mkdocs":
        return "skip: tests/test_docs.py builds the site"
    if program == "multimodal-train":
        return check_train(words[1:])
    scripts = console_scripts()
    assert program in scripts, f"{program}: not a command this project installs ({sorted(scripts)})"
    for word in words:
        if word.startswith("recipes/"):
            assert os.path.exists(os.path.join(ROOT, word)), f"{word} does not exist"
    return f"{program}: parsed {_parse_with(_entry(scripts[program]), words[1:])}"
