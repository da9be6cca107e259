"""mkdocs hook: the studies' READMEs (experiments/<study>/README.md) become pages of the site.

They stay next to their scripts and results in the repository; this hook adds each of them, and the pictures
they show, to the site's files, so the research page can link them and ``mkdocs build --strict`` checks
their links like any other page's.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def on_files(files, config):
    for readme in sorted(ROOT.glob("experiments/*/README.md")):
        paths = [readme] + [readme.parent / m for m in IMAGE.findall(readme.read_text())]
        for path in paths:
            if path.is_file():  # a missing picture is left to the strict link check, which names it
                rel = path.resolve().relative_to(ROOT).as_posix()
                if files.get_file_from_path(rel) is None:
                    files.append(File(rel, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
