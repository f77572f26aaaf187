"""Builds the deployment zip as `azd deploy` and `func azure functionapp publish` do: the project folder
minus what `.funcignore` (gitignore syntax) leaves out.

Tests use it to check what would reach Azure; a user can list it before deploying:

    python -m tests.support.deploy_package [--root .] [--out package.zip]
"""

from __future__ import annotations

import argparse
import os
import zipfile
from pathlib import Path

import pathspec

__all__ = ["build_zip", "package_files"]

IGNORE_FILE = ".funcignore"


def _spec(root: Path) -> pathspec.GitIgnoreSpec:
    ignore = root / IGNORE_FILE
    lines = ignore.read_text(encoding="utf-8").splitlines() if ignore.is_file() else []
    return pathspec.GitIgnoreSpec.from_lines(lines)


def package_files(root: Path) -> list[str]:
    """The files (POSIX paths relative to ``root``, sorted) the package holds.

    A directory the ignore file excludes is not entered, as with git: a file under it cannot be re-included.
    Symbolic links are not followed.
    """
    spec = _spec(root)
    files: list[str] = []
    for directory, dirnames, filenames in os.walk(root):
        here = Path(directory).relative_to(root).as_posix()
        prefix = "" if here == "." else here + "/"
        dirnames[:] = sorted(
            d for d in dirnames if not (Path(directory, d).is_symlink() or spec.match_file(f"{prefix}{d}/"))
        )
        files += [
            prefix + f for f in filenames if not Path(directory, f).is_symlink() and not spec.match_file(prefix + f)
        ]
    return sorted(files)


def build_zip(root: Path, destination: Path) -> Path:
    """Write the package of ``root`` to ``destination`` (deflated, entries in sorted order); returns it."""
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in package_files(root):
            archive.write(root / name, name)
    return destination


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="List (or zip) what a deployment of this app would upload.")
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("--out", type=Path, help="write the zip here; without it, only list the files")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.out:
        size = build_zip(root, args.out).stat().st_size
        print(f"{args.out}: {size} bytes")
    else:
        print("\n".join(package_files(root)))


if __name__ == "__main__":
    main()
