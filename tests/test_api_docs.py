"""docs/API.md documents the whole public surface, and only what exists.

The doc is parsed simply: a ``### `name` `` heading documents a public name, and its section (up to the
next heading) documents the name's fields (table rows ``| `field` |``) or values. So a new public name,
method, field, event or error code without documentation fails here, and so does a heading for
something renamed or removed.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
from pathlib import Path
from typing import Any

import click
import pytest

import fabstir
from fabstir import ErrorCode, EventName, FabstirSDK, FabstirSDKSync, _config
from fabstir.cli import cli

pytestmark = pytest.mark.timeout(60)

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "API.md"
DOC = DOC_PATH.read_text(encoding="utf-8")
LINES = DOC.splitlines()

#: ``### `FabstirSDK.submit_job` `` → ``FabstirSDK.submit_job`` (a signature after the name is ignored).
_HEADING = re.compile(r"^###\s+`([^`]+)`\s*$")
#: A backticked dotted name such as ``ResponseStream.pause`` anywhere in the text.
_DOTTED = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)`")


def _heading_name(text: str) -> str:
    return text.split("(", 1)[0].strip()


HEADINGS: dict[str, int] = {}
for _number, _line in enumerate(LINES):
    _match = _HEADING.match(_line)
    if _match:
        HEADINGS.setdefault(_heading_name(_match.group(1)), _number)


def section(name: str) -> str:
    """The text under the ``### `name` `` heading, up to the next heading of any level."""
    assert name in HEADINGS, f"docs/API.md has no heading ### `{name}`"
    start = HEADINGS[name] + 1
    end = next((i for i in range(start, len(LINES)) if LINES[i].startswith("#")), len(LINES))
    return "\n".join(LINES[start:end])


def plain_section(title: str) -> str:
    """The text under a heading without backticks (``### fabstir run``), up to the next heading."""
    start = LINES.index(title) + 1
    end = next((i for i in range(start, len(LINES)) if LINES[i].startswith("#")), len(LINES))
    return "\n".join(LINES[start:end])


def has_row(text: str, name: str) -> bool:
    """Whether ``text`` has a table row whose first cell is ``name`` in backticks."""
    return re.search(rf"^\|\s*`{re.escape(name)}`\s*\|", text, re.MULTILINE) is not None


def mentions(text: str, name: str) -> bool:
    """Whether ``name`` is backticked in ``text``: alone, qualified (``X.name``) or called (``name()``)."""
    return re.search(rf"`(?:[\w.]*\.)?{re.escape(name)}(?![\w:])[^`]*`", text) is not None


def public_members(cls: type, instance: object) -> set[str]:
    """The public methods and properties of ``cls`` and the public attributes its instances set."""
    names = {n for n in dir(cls) if not n.startswith("_")}
    names |= {n for n in getattr(instance, "__dict__", {}) if not n.startswith("_")}
    return names


def _assigned_on_instances(cls: type, attribute: str) -> bool:
    """Whether the class's code sets ``self.<attribute>`` (an instance attribute ``dir`` cannot see)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    return re.search(rf"\bself\.{re.escape(attribute)}\s*(?::[^=\n]+)?=", source) is not None


def resolve(dotted: str) -> bool:
    """Whether ``dotted`` (``FabstirSDK.connect``, ``NodeInfo.node_id``) names something that exists."""
    first, *rest = dotted.split(".")
    if first not in fabstir.__all__:
        return False
    obj: Any = getattr(fabstir, first)
    for attribute in rest:
        if hasattr(obj, attribute):
            obj = getattr(obj, attribute)
        elif isinstance(obj, type) and _assigned_on_instances(obj, attribute):
            return attribute == rest[-1]  # an instance attribute: nothing further to look into
        else:
            return False
    return True


def _public_dataclasses() -> list[type]:
    return [
        obj
        for name in fabstir.__all__
        if isinstance(obj := getattr(fabstir, name), type) and dataclasses.is_dataclass(obj)
    ]


def _public_enums() -> list[type[enum.Enum]]:
    return [
        obj
        for name in fabstir.__all__
        if isinstance(obj := getattr(fabstir, name), type) and issubclass(obj, enum.Enum)
    ]


# -- the helpers themselves ------------------------------------------------------------------------------


def test_helpers_parse_what_they_claim() -> None:
    """The parsing helpers accept what they should and reject what they should not, so the checks below
    cannot pass vacuously."""
    table = "| field | meaning |\n|---|---|\n| `seed` | the seed |\nsee `other_field` and `run()`"
    assert has_row(table, "seed")
    assert not has_row(table, "other_field")
    assert mentions(table, "other_field")
    assert mentions(table, "run")
    assert not mentions(table, "other")  # a prefix is not a mention
    assert mentions("`p2p:peer:connect`", "p2p:peer:connect")
    assert not mentions("`p2p:peer:connect`", "p2p:peer")
    assert resolve("FabstirSDK.submit_job")
    assert resolve("FabstirSDK.config")  # an instance attribute
    assert resolve("NodeInfo.node_id")  # a property
    assert resolve("EventName.JOB_FAILOVER")
    assert not resolve("FabstirSDK.submit_jobs")
    assert not resolve("NoSuchName.method")
    assert not resolve("FabstirSDK.config.nothing_below_an_instance_attribute")
    assert len(HEADINGS) > 100  # the doc was parsed at all


# -- (1) every exported name -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", fabstir.__all__)
def test_every_exported_name_has_a_heading(name: str) -> None:
    """Every name in ``fabstir.__all__`` is documented under a ``### `name` `` heading of its own."""
    assert name in HEADINGS, f"docs/API.md does not document fabstir.{name} (no ### `{name}` heading)"


# -- (2) every FabstirSDK method and property ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(public_members(FabstirSDK, FabstirSDK())))
def test_every_sdk_member_has_a_heading(name: str) -> None:
    """Every public method, property and attribute of ``FabstirSDK`` has a ``### `FabstirSDK.name` ``
    heading."""
    assert f"FabstirSDK.{name}" in HEADINGS, f"docs/API.md does not document FabstirSDK.{name}"


def test_sync_facade_differences_are_listed() -> None:
    """What ``FabstirSDK`` has and ``FabstirSDKSync`` lacks, and what only the facade has, is named in the
    facade's section: the doc's list of differences is complete."""
    text = section("FabstirSDKSync")
    sdk = public_members(FabstirSDK, FabstirSDK())
    sync = {n for n in dir(FabstirSDKSync) if not n.startswith("_")}
    for name in sorted(sdk ^ sync):
        assert mentions(text, name), f"the FabstirSDKSync section does not mention {name}"


# -- (3) every event name ----------------------------------------------------------------------------------


@pytest.mark.parametrize("event", list(EventName), ids=str)
def test_every_event_name_has_a_row(event: EventName) -> None:
    """Every ``EventName`` value has a row in the events table (with its data keys)."""
    assert has_row(section("EventName"), event.value), f"no row for event {event.value}"


# -- (4) every error code ----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_every_error_code_has_a_row(code: ErrorCode) -> None:
    """Every ``ErrorCode`` value has a row in the error code table."""
    assert has_row(section("ErrorCode"), code.value), f"no row for error code {code.value}"


@pytest.mark.parametrize(
    "error",
    [
        obj
        for n in fabstir.__all__
        if isinstance(obj := getattr(fabstir, n), type) and issubclass(obj, fabstir.FabstirError)
    ],
    ids=lambda cls: cls.__name__,
)
def test_every_error_class_is_in_the_tree(error: type[fabstir.FabstirError]) -> None:
    """The drawn error tree names every error class (the tree is where readers look first)."""
    tree = DOC.split("## Errors", 1)[1].split("```", 2)[1]
    assert re.search(rf"\b{error.__name__}\b", tree), f"{error.__name__} is missing from the error tree"


# -- (5) every configuration field, and every field of the other value objects ------------------------------


@pytest.mark.parametrize("config", [getattr(_config, n) for n in _config.__all__], ids=lambda c: c.__name__)
def test_every_config_field_has_a_row(config: type) -> None:
    """Every field of ``SDKConfig`` and of each config part has a row (default and meaning) in its
    section."""
    text = section(config.__name__)
    for field in dataclasses.fields(config):
        assert has_row(text, field.name), f"{config.__name__}.{field.name} is not documented"


@pytest.mark.parametrize("cls", _public_dataclasses(), ids=lambda c: c.__name__)
def test_every_public_dataclass_field_has_a_row(cls: type) -> None:
    """Every field of every exported dataclass (models, events, host, handles) has a row in its section."""
    text = section(cls.__name__)
    for field in dataclasses.fields(cls):
        assert has_row(text, field.name), f"{cls.__name__}.{field.name} is not documented"


@pytest.mark.parametrize("cls", _public_enums(), ids=lambda c: c.__name__)
def test_every_enum_value_is_mentioned(cls: type[enum.Enum]) -> None:
    """Every value of every exported string enum is named in its section."""
    text = section(cls.__name__)
    for member in cls:
        assert mentions(text, str(member.value)), f"{cls.__name__}.{member.name} is not documented"


# -- (6) nothing documented that does not exist -------------------------------------------------------------


@pytest.mark.parametrize("heading", sorted(HEADINGS))
def test_every_heading_names_something_real(heading: str) -> None:
    """Every ``### `name` `` heading names an exported name or an existing attribute of one."""
    assert resolve(heading), f"docs/API.md documents {heading}, which does not exist"


def test_every_dotted_reference_is_real() -> None:
    """Every backticked ``Name.attribute`` whose ``Name`` is exported (table rows included) exists."""
    dotted = {ref for ref in _DOTTED.findall(DOC) if ref.split(".", 1)[0] in fabstir.__all__}
    assert dotted, "no dotted references found: the pattern is broken"
    missing = sorted(ref for ref in dotted if not resolve(ref))
    assert not missing, f"docs/API.md refers to names that do not exist: {missing}"


# -- the CLI -----------------------------------------------------------------------------------------------


def _commands(group: click.Group, prefix: str) -> list[str]:
    found: list[str] = []
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found += _commands(command, path)
        else:
            found.append(path)
    return found


@pytest.mark.parametrize("command", _commands(cli, "fabstir"))
def test_every_cli_command_has_a_heading(command: str) -> None:
    """Every (non-hidden) ``fabstir`` subcommand has a ``### fabstir ...`` heading in the CLI section."""
    assert f"### {command}" in LINES, f"docs/API.md does not document `{command}`"


def test_cli_headings_name_real_commands() -> None:
    """Every ``### fabstir ...`` heading names an existing command, and its section shows its usage."""
    known = set(_commands(cli, "fabstir"))
    headings = [line.removeprefix("### ") for line in LINES if line.startswith("### fabstir")]
    assert headings
    for heading in headings:
        assert heading in known, f"docs/API.md documents `{heading}`, which is not a command"
        assert plain_section(f"### {heading}").strip(), f"`{heading}` has an empty section"
