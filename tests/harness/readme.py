"""What the README shows, read by the tests that run it: an operator copies the README's
blocks, so the tests take theirs from the same place (a block the README changes is
what the tests run next)."""

from __future__ import annotations

import textwrap
from pathlib import Path

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def readme_block(first_line: str) -> str:
    """The README's indented code block whose first line is ``first_line`` (its title,
    a comment such as ``# /etc/postfix/transport: ...``), dedented, title included."""
    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("    ") and line.strip() == first_line and (i == 0 or not lines[i - 1].strip()):
            block = []
            for following in lines[i:]:
                if following.strip() and not following.startswith("    "):
                    break
                block.append(following)
            return textwrap.dedent("\n".join(block).rstrip()) + "\n"
    raise LookupError(f"README.md has no code block starting with {first_line!r}")
