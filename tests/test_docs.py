"""The docs stay true as the code grows: docs/recipe.md documents every recipe key (and no other), the README's
commands table has every CLI command, every `edgetl ...` command shown uses real commands and options, every recipe
shown validates, every relative link resolves, the README stays short and for users, and the user docs say nothing
about how edgetl is developed."""

from __future__ import annotations

import re
import shlex
import types
import typing
from pathlib import Path

import click
import pytest
import yaml
from pydantic import BaseModel

from conftest import REPO
from edgetl.cli import main
from edgetl.recipe import Recipe, parse_recipe

README = REPO / "README.md"
DOCS = REPO / "docs"
RECIPE_REFERENCE = DOCS / "recipe.md"
README_MAX_LINES = 250


def recipe_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        annotation = field.annotation
        if isinstance(annotation, types.UnionType | typing._UnionGenericAlias):  # an optional section: `X | None`
            sections = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
            if sections:
                keys.append(prefix + name)  # the section itself (what its presence turns on) ...
                annotation = sections[0]  # ... and each of its keys
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += recipe_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def user_docs() -> list[Path]:
    """The pages written for users: the README and docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def all_docs() -> list[Path]:
    """Every page whose links must resolve: the user docs, DEVELOPMENT.md and the measured results."""
    return [*user_docs(), REPO / "DEVELOPMENT.md", REPO / "benchmarks" / "RESULTS.md"]


def reference_rows(text: str) -> list[str]:
    return re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE)


def test_every_recipe_key_is_in_the_recipe_reference():
    rows = reference_rows(RECIPE_REFERENCE.read_text())
    keys = recipe_keys(Recipe)
    assert len(keys) > 40
    missing = [k for k in keys if k not in rows]
    assert not missing, f"docs/recipe.md's reference table lacks {missing}"


def test_every_row_of_the_recipe_reference_is_a_recipe_key():
    keys = set(recipe_keys(Recipe))
    rows = reference_rows(RECIPE_REFERENCE.read_text())
    assert len(rows) == len(set(rows)), "a key has two rows"
    unknown = [row for row in rows if row not in keys]
    assert not unknown, f"docs/recipe.md documents keys the schema does not have: {unknown}"


def commands_table(readme: str) -> str:
    section = readme.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("| `edgetl "))


def test_every_cli_command_is_in_the_readme_commands_table():
    table = commands_table(README.read_text())
    for name in main.commands:
        assert f"| `edgetl {name} " in table or f"| `edgetl {name}`" in table, name


# --- commands shown in the docs -------------------------------------------------------------------------------

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`(edgetl [^`\n]+)`")
OPTION = re.compile(r"(?<![\w/.-])(--?[A-Za-z][\w-]*)")
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def shown_commands(text: str) -> list[str]:
    """Every `edgetl ...` command line of a fenced block (after a `$ ` prompt or VAR=value assignments, joined
    across trailing backslashes, comments cut) and every inline code span that starts with `edgetl `."""
    commands = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            while words and ASSIGNMENT.match(words[0]):
                words.pop(0)
            for part in " ".join(words).split("&&"):
                if part.strip().startswith("edgetl "):
                    commands.append(part.strip())
    return commands + INLINE.findall(text)


def option_names(command: click.Command) -> set[str]:
    return {name for param in command.params for name in (*param.opts, *param.secondary_opts)} | {"-h", "--help"}


def unknown_parts(shown: str) -> list[str]:
    """What in one shown command line the CLI does not have: the command, or an option of it."""
    words = shown.split()
    if len(words) < 2 or words[1].startswith("-"):
        return [w for w in words[1:] if w.startswith("-") and w not in ("--version", "--help", "-h")]
    name = words[1]
    if name.isupper():  # a placeholder: `edgetl COMMAND --help`
        return []
    if name not in main.commands:
        return [name]
    known = option_names(main.commands[name])
    return [option for option in OPTION.findall(" ".join(words[2:]))
            if option.split("/")[0] not in known]


def test_the_command_check_finds_what_is_not_there():
    assert unknown_parts("edgetl build recipe.yaml --epochs 3") == ["--epochs"]
    assert unknown_parts("edgetl train recipe.yaml") == ["train"]
    assert unknown_parts("edgetl bench model.onnx -t 1,2 --baseline b.json") == []
    assert shown_commands("```\n$ EDGETL_OFFLINE=1 edgetl check r.yaml && edgetl build r.yaml  # x\n```\n") == [
        "edgetl check r.yaml", "edgetl build r.yaml"]


@pytest.mark.parametrize("page", user_docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_shown_is_a_real_command_with_real_options(page):
    shown = shown_commands(page.read_text())
    bad = {command: unknown_parts(command) for command in shown if unknown_parts(command)}
    assert not bad, f"{page.name}: commands or options the CLI does not have: {bad}"


def test_the_readme_shows_the_quickstart_commands():
    shown = shown_commands(README.read_text())
    for name in ("check", "build", "bundle", "deploy", "bench"):
        assert any(command.startswith(f"edgetl {name} ") for command in shown), name


@pytest.mark.parametrize("page", user_docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_recipe_shown_is_valid(page):
    for block in re.findall(r"^```yaml\n(.*?)^```", page.read_text(), flags=re.MULTILINE | re.DOTALL):
        document = yaml.safe_load(block)
        if isinstance(document, dict) and "name" in document and "data" in document:  # a whole recipe
            parse_recipe(document, source=f"{page.name} (a recipe shown there)")


# --- links -----------------------------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.MULTILINE):
        base = slug(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and (file.is_dir() or file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(target)
    return broken


def test_the_link_check_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A `b` → c: d\n[ok](#a-b--c-d) [gone](missing.md) [no anchor](#nowhere) [web](https://x.y)\n")
    assert broken_links(page) == ["missing.md", "#nowhere"]


@pytest.mark.parametrize("page", all_docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    assert page.is_file(), page
    assert not broken_links(page), f"{page.relative_to(REPO)}: broken links {broken_links(page)}"


def test_docs_has_an_index_linking_every_page():
    index = (DOCS / "README.md").read_text()
    linked = {target.partition("#")[0] for target in LINK.findall(index)}
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert len(pages) >= 10
    assert pages <= linked, f"docs/README.md does not link {sorted(pages - linked)}"


# --- the README is short and for users --------------------------------------------------------------------------

def test_the_readme_is_at_most_250_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details to docs/"


def test_the_readme_points_contributors_to_development_md():
    readme = README.read_text()
    assert "[DEVELOPMENT.md](DEVELOPMENT.md)" in readme and "python -m pytest" in readme


# Words that only make sense to the people developing edgetl, on their machines.
DEVELOPMENT_ONLY = [
    re.compile(p, flags=re.IGNORECASE) for p in (
        r"\.\./shared", r"shared/cache", r"EDGETL_SHARED_CACHE", r"\bissues? \d", r"\bsession", r"DESIGN\.md",
        r"\.ci/run", r"tools/mutations", r"\b2 cores\b", r"\bthis (VM|machine)\b", r"\bStatus:",
    )
]


def development_words(text: str) -> list[str]:
    return [m.group(0) for pattern in DEVELOPMENT_ONLY for m in pattern.finditer(text)]


def test_the_development_word_check_finds_them():
    assert development_words("Status: issues 2 and 3, measured on this VM with 2 cores; see ../shared/cache.") == [
        "../shared", "shared/cache", "issues 2", "2 cores", "this VM", "Status:"]
    assert development_words("Install, quickstart, deploy to a Pi.") == []


@pytest.mark.parametrize("page", user_docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_user_docs_say_nothing_about_how_edgetl_is_developed(page):
    found = development_words(page.read_text())
    assert not found, f"{page.relative_to(REPO)} mentions {found}: that belongs in DEVELOPMENT.md or benchmarks/RESULTS.md"
