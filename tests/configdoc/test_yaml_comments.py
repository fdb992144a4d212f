"""The comment-keeping YAML reader behind --help and docs/config/: which comment documents which key, and the
YAML it refuses (naming the file and line) rather than printing a wrong page."""

from __future__ import annotations

import pytest

from ldmkit.configdoc import ConfigDocError, parse_yaml


def test_reader_keeps_comments_and_rejects_what_it_cannot_read():
    parsed = parse_yaml("# head\n# @package _global_\na:  # a map\n  b: 'x # y'  # the b\n"
                        "             # more on b\n  c: [1,\n     2]\nd:\n  - one\n")
    assert parsed.header == ["head"] and parsed.package == "_global_"
    assert [(n.key, n.value, n.comment, n.items) for n in parsed.nodes] == [
        ("a", "", ["a map"], []), ("a.b", "'x # y'", ["the b", "more on b"], []), ("a.c", "[1, 2]", [], []),
        ("d", "", [], ["one"])]
    with pytest.raises(ConfigDocError, match="x.yaml:1"):
        parse_yaml("a: |\n  text\n", "x.yaml")


def test_defaults_comments_continuations_and_lead_comments():
    """A deeper comment-only line continues the comment above it; one at the key's column or after a blank line
    waits for the next key, which takes it only when it has no comment of its own."""
    parsed = parse_yaml(
        "# head line\n#   an example\n\n"
        "defaults:\n  - common   # shared keys\n  - f: null  # f=1|2: the factor\n             # continued\n"
        "  - _self_\n# about b\nb: 1\nc: 2  # the c\n# not c's\nd: {x: 1}  # the d\n# dropped\n\ne: 3\n")
    assert parsed.header == ["head line", "  an example"]
    assert parsed.defaults == [("common", ["shared keys"]), ("f: null", ["f=1|2: the factor", "continued"]),
                               ("_self_", [])]
    assert [(n.key, n.comment) for n in parsed.nodes] == [
        ("b", ["about b"]), ("c", ["the c"]), ("d", ["the d"]), ("e", [])]
    assert parse_yaml("# only a header\n{}\n").nodes == []


@pytest.mark.parametrize(("text", "message"), [
    ("a: [1,\n  2,\n", "x.yaml: unclosed flow value of a"),
    ("- x\n", "x.yaml:1: a list item outside a list"),
    ("a:\n  - b: 1\n", "x.yaml:2: nested block lists"),
    ("a: 1\nb: &anchor 2\n", "x.yaml:2: block scalars, anchors and tags"),
    ("a: 1\nnot a key\n", "x.yaml:2: cannot read 'not a key'"),
])
def test_what_the_reader_refuses_names_file_and_line(text, message):
    with pytest.raises(ConfigDocError) as caught:
        parse_yaml(text, "x.yaml")
    assert str(caught.value).startswith(message)
