"""``python -m ldmkit.configdoc DOCS``: (re)generate DOCS/config/ from conf/."""

from __future__ import annotations

import sys
from pathlib import Path

from ldmkit.configdoc.markdown import DOCS_SUBDIR, write_docs
from ldmkit.configdoc.yaml_comments import ConfigDocError


def main(argv: list[str] | None = None) -> int:
    """Write the Markdown pages under the one folder given; 2 on a bad argument or an unreadable conf file."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m ldmkit.configdoc DOCS_DIR  (writes DOCS_DIR/config/*.md from conf/)", file=sys.stderr)
        return 2
    try:
        paths = write_docs(Path(args[0]))
    except ConfigDocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths)} pages in {Path(args[0]) / DOCS_SUBDIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
