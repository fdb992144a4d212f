"""The config reference, generated from ``conf/``: every group, option and key with its default and description.

A key's description is its YAML end-of-line ``# comment`` (plus comment-only lines right below it, indented past
the key); a file's leading comment describes the file. :mod:`.yaml_comments` reads those comments (PyYAML and
OmegaConf drop them), :mod:`.catalog` turns the files into a :class:`Catalog`, :mod:`.text` renders it for
``ldmkit COMMAND --help`` and ``ldmkit configs [NAME]``, :mod:`.markdown` for ``python -m ldmkit.configdoc docs/``
(``docs/config/<group>.md``, ``docs/config/commands/<command>.md``), and :mod:`.hints` gives the CLI's shell
completions and unknown-flag hints. Standard library only: the CLI imports it for ``--help`` and completion
without paying for torch or Hydra.
"""

from __future__ import annotations

from ldmkit.configdoc.catalog import (
    Catalog,
    ConfigFile,
    DefaultItem,
    Entry,
    GroupKeys,
    command_entries,
    command_name,
    default_conf,
    defaults_text,
    first_sentence,
    group_keys,
    group_note,
    load_catalog,
    option_order,
    read_config,
)
from ldmkit.configdoc.hints import FLAG_SYNONYMS, flag_overrides, known_names, override_completions
from ldmkit.configdoc.markdown import COMMANDS_SUBDIR, DOCS_SUBDIR, GENERATED, markdown_pages, write_docs
from ldmkit.configdoc.text import catalog_text, command_text, config_text, group_text
from ldmkit.configdoc.yaml_comments import ConfigDocError, KeyNode, ParsedYaml, parse_yaml, split_comment

__all__ = [
    "COMMANDS_SUBDIR", "DOCS_SUBDIR", "FLAG_SYNONYMS", "GENERATED", "Catalog", "ConfigDocError", "ConfigFile",
    "DefaultItem", "Entry", "GroupKeys", "KeyNode", "ParsedYaml", "catalog_text", "command_entries", "command_name",
    "command_text", "config_text", "default_conf", "defaults_text", "first_sentence", "flag_overrides", "group_keys",
    "group_note", "group_text", "known_names", "load_catalog", "markdown_pages", "option_order",
    "override_completions", "parse_yaml", "read_config", "split_comment", "write_docs",
]
