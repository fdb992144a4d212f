"""A line-by-line reader of our simple YAML that keeps the comments documenting each key.

Neither OmegaConf nor ruamel.yaml reads them for us: OmegaConf loads through a PyYAML ``SafeLoader``, which
drops comments, and ruamel.yaml 0.19's round-trip loader, measured on conf/ (113 files), kept every key and
comment only once its comment tokens were re-split by line and column, re-spaced flow lists (``[1,2]`` became
``[1, 2]`` on the docs pages) and took 200-270 ms against 10 ms here, paid on every ``--help`` and completion.

What it reads: nested mappings by indentation, ``key: value  # comment``, block lists (the Hydra ``defaults:``
list) and flow values (also over several lines). Anything else stops with the file and line, never a wrong page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class ConfigDocError(ValueError):
    """A conf file uses YAML this reader does not understand (names the file and line)."""


@dataclass
class KeyNode:
    """One key as read: its dotted name, value as written, comment parts and block-list items."""

    key: str  # dotted within the file: diffusion.schedule
    indent: int
    value: str  # as written ("" for a mapping or a block list)
    comment: list[str] = field(default_factory=list)  # the end-of-line comment and its continuation lines
    items: list[str] = field(default_factory=list)  # a block list's items, as written
    children: bool = False  # keys nested under it


@dataclass
class ParsedYaml:
    """What :func:`parse_yaml` read from one file."""

    header: list[str] = field(default_factory=list)  # the leading comment, line by line
    package: str | None = None  # the ``# @package`` directive
    defaults: list[tuple[str, list[str]]] = field(default_factory=list)  # (item text, comment parts)
    nodes: list[KeyNode] = field(default_factory=list)  # every key but ``defaults``, in file order


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[\w$@./-]+):(?:[ \t]+(?P<value>.*?))?\s*$")
_PACKAGE = re.compile(r"^@package\s+(\S+)")


def split_comment(line: str) -> tuple[str, str | None, int]:
    """``(code, comment, column of '#')`` of one line; ``#`` inside a quoted scalar is not a comment."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
            continue
        before = line[:i].rstrip()
        if ch in "'\"" and (not before or before[-1] in ":-[{,"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1 :].strip(), i
    return line.rstrip(), None, -1


def _balanced(text: str) -> bool:
    """Whether the brackets of a flow value are closed (quotes not considered: our flow values hold none)."""
    return text.count("[") + text.count("{") == text.count("]") + text.count("}")


def _is_list_item(stripped: str) -> bool:
    return stripped == "-" or stripped.startswith("- ")


@dataclass
class _Reader:
    """The state of :func:`parse_yaml` from one line to the next."""

    source: str  # the file name errors cite
    out: ParsedYaml = field(default_factory=ParsedYaml)
    stack: list[KeyNode] = field(default_factory=list)  # the keys enclosing the current line, outermost first
    in_header: bool = True
    lead: list[str] = field(default_factory=list)  # comment-only lines, for the next key if it has no comment
    target: list[str] | None = None  # comment parts a deeper comment-only line continues
    target_indent: int = 0
    flow: KeyNode | None = None  # a flow value spread over several lines

    def read_line(self, lineno: int, line: str) -> None:
        """Take one line: a flow value's continuation, a comment-only or blank line, a list item or a key."""
        code, comment, col = split_comment(line)
        if self.flow is not None:
            self._continue_flow(code)
        elif not code.strip():
            self._comment_line(line, comment, col)
        else:
            self.in_header = False
            indent = len(code) - len(code.lstrip(" "))
            where = f"{self.source}:{lineno}"
            if _is_list_item(code.strip()):
                self._list_item(code.strip()[1:].strip(), indent, comment, where)
            else:
                self._key(code, indent, comment, where)

    def finish(self) -> ParsedYaml:
        """The result, once every line is read."""
        if self.flow is not None:
            raise ConfigDocError(f"{self.source}: unclosed flow value of {self.flow.key}")
        return self.out

    def _continue_flow(self, code: str) -> None:
        self.flow.value += " " + code.strip()
        self.flow = None if _balanced(self.flow.value) else self.flow

    def _comment_line(self, line: str, comment: str | None, col: int) -> None:
        """A blank line ends the header and any continuation; a comment-only line extends one of them."""
        if comment is None:
            self.in_header, self.target, self.lead = False, None, []
        elif self.in_header:
            package = _PACKAGE.match(comment)
            if package:
                self.out.package = package[1]
            else:
                self.out.header.append(line.strip()[1:].removeprefix(" ").rstrip())
        elif self.target is not None and col > self.target_indent:
            self.target.append(comment)
        else:
            self.lead, self.target = [*self.lead, comment], None

    def _expect_continuation(self, parts: list[str], indent: int, comment: str | None) -> None:
        """Deeper comment-only lines below a commented line continue its comment ``parts``."""
        self.target, self.target_indent = (parts, indent) if comment else (None, 0)

    def _close(self, indent: int, inclusive: bool) -> None:
        """Leave the keys a line at ``indent`` is no longer nested in."""
        while self.stack and (self.stack[-1].indent > indent or inclusive and self.stack[-1].indent == indent):
            self.stack.pop()

    def _list_item(self, item: str, indent: int, comment: str | None, where: str) -> None:
        """``- item``: a ``defaults:`` item (with its comment) or a scalar item of a block list."""
        self._close(indent, inclusive=False)
        parent = self.stack[-1] if self.stack else None
        if parent is None or parent.value or parent.children:
            raise ConfigDocError(f"{where}: a list item outside a list")
        if parent.key == "defaults" and parent.indent == 0:
            parts = [comment] if comment else []
            self.out.defaults.append((item, parts))
            self._expect_continuation(parts, indent, comment)
        elif _KEY.match(item) or item.startswith(("- ", "|", ">")):
            raise ConfigDocError(f"{where}: nested block lists/mappings in a list are not supported")
        else:
            parent.items.append(item)
            self.target = None

    def _key(self, code: str, indent: int, comment: str | None, where: str) -> None:
        """``key: value  # comment``: a new node, nested in the keys indented less."""
        match = _KEY.match(code)
        if match is None:
            if code.strip() == "{}" and not self.stack and not self.out.nodes:
                return  # an empty mapping as the whole document
            raise ConfigDocError(f"{where}: cannot read {code.strip()!r} (expected key: value)")
        self._close(indent, inclusive=True)
        value = match["value"] or ""
        if value and value[0] in "|>&*!":
            raise ConfigDocError(f"{where}: block scalars, anchors and tags are not supported")
        if self.stack:
            self.stack[-1].children = True
        dotted = f"{self.stack[-1].key}.{match['key']}" if self.stack else match["key"]
        node = KeyNode(dotted, indent, value, [comment] if comment else list(self.lead))
        self.lead = []
        self._expect_continuation(node.comment, indent, comment)
        if value and value[0] in "[{" and not _balanced(value):
            self.flow = node
        if dotted != "defaults":
            self.out.nodes.append(node)
        self.stack.append(node)


def parse_yaml(text: str, source: str = "<yaml>") -> ParsedYaml:
    """Read our YAML keeping comments: header, ``# @package``, defaults list, and every key in file order."""
    reader = _Reader(source)
    for lineno, line in enumerate(text.splitlines(), 1):
        reader.read_line(lineno, line)
    return reader.finish()
