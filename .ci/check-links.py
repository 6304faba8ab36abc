#!/usr/bin/env python3
"""Check the relative links of the repository's Markdown files (no network).

Every `[text](target)` and `[label]: target` outside code blocks and code spans whose target is
not a URL must name a file or directory that exists, and its `#fragment`, if any, a heading (or an
`<a id>`/`<a name>`) of that Markdown file, with GitHub's anchor rules. Absolute URLs are not
fetched. Usage: python3 .ci/check-links.py [ROOT]; exit 1 with `file:line: message` per broken link.
"""
import os
import re
import sys

SKIP_DIRS = {".git", "target", "node_modules", "corpus", "artifacts"}
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, …
INLINE = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def slug(text):
    """GitHub's heading anchor: lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def lines_outside_code(path):
    """(line number, line) of every line outside fenced code blocks, code spans blanked."""
    fence = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            stripped = line.lstrip()
            m = re.match(r"(`{3,}|~{3,})", stripped)
            if m:
                if fence is None:
                    fence = m.group(1)
                elif stripped.startswith(fence):
                    fence = None
                continue
            if fence is None:
                yield n, re.sub(r"(`+)(?:(?!\1).)+?\1", "``", line.rstrip("\n"))


_anchors = {}


def anchors(path):
    if path not in _anchors:
        seen = {}
        found = set()
        for _, line in lines_outside_code(path):
            for a in HTML_ANCHOR.findall(line):
                found.add(a)
        # Headings keep their code spans for the slug: read them again unblanked.
        fence = None
        with open(path, encoding="utf-8") as f:
            for line in f:
                stripped = line.lstrip()
                m = re.match(r"(`{3,}|~{3,})", stripped)
                if m:
                    if fence is None:
                        fence = m.group(1)
                    elif stripped.startswith(fence):
                        fence = None
                    continue
                h = HEADING.match(line.rstrip("\n")) if fence is None else None
                if h:
                    s = slug(h.group(2))
                    k = seen.get(s, 0)
                    seen[s] = k + 1
                    found.add(s if k == 0 else f"{s}-{k}")
        _anchors[path] = found
    return _anchors[path]


def markdown_files(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".md"):
                yield os.path.join(dirpath, name)


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    errors = []
    checked = 0
    for md in markdown_files(root):
        rel = os.path.relpath(md, root)
        for n, line in lines_outside_code(md):
            targets = INLINE.findall(line)
            m = REFDEF.match(line)
            if m:
                targets.append(m.group(1))
            for target in targets:
                if not target or URL.match(target):
                    continue
                checked += 1
                path, _, fragment = target.partition("#")
                dest = md if not path else os.path.normpath(os.path.join(os.path.dirname(md), path))
                if not os.path.exists(dest):
                    errors.append(f"{rel}:{n}: {target}: no such file")
                elif fragment and dest.endswith(".md") and fragment not in anchors(dest):
                    errors.append(f"{rel}:{n}: {target}: no heading with anchor #{fragment}")
    for e in errors:
        print(e, file=sys.stderr)
    print(f"links: {checked} relative links checked, {len(errors)} broken")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
