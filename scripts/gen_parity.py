"""Write docs/PROTOCOL_PARITY.md from the parity table (scripts/parity/) and the study config.

    python scripts/gen_parity.py           regenerate the document
    python scripts/gen_parity.py --check   exit 1 (with a diff) when the committed document is stale
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.parity import render  # noqa: E402

DOC = ROOT / "docs" / "PROTOCOL_PARITY.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when they differ")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        old = DOC.read_text() if DOC.is_file() else ""
        if old == text:
            print(f"{DOC.relative_to(ROOT)} is up to date")
            return 0
        diff = difflib.unified_diff(old.splitlines(keepends=True), text.splitlines(keepends=True),
                                    f"{DOC.relative_to(ROOT)} (on disk)", f"{DOC.relative_to(ROOT)} (generated)")
        sys.stdout.writelines(diff)
        print(f"\n{DOC.relative_to(ROOT)} is stale: run `python scripts/gen_parity.py` and commit it", file=sys.stderr)
        return 1
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
