#!/usr/bin/env python3
"""Build the NegLabel candidate corpus shipped in ``raymmft/assets/wordnet/`` from WordNet 3.0.

Reads Debian's ``wordnet-base`` data files directly (``apt-get install -y wordnet-base`` puts
``data.noun`` and ``data.adj`` in ``/usr/share/wordnet``), so neither NLTK nor WordNet is needed at run
time. Output, ``corpus.tsv.gz``: one line per distinct lemma,

    <pos>\\t<lemma>\\t<category>[,<category>...]

with ``pos`` ``n`` or ``a``, the lemma with underscores turned into spaces (case kept, adjective syntactic
markers such as ``(a)``/``(p)``/``(ip)`` removed), and the lexicographer categories (e.g. ``noun.animal``)
of all the lemma's senses in data-file order. Lines are in first-occurrence order so the output is
deterministic. The WordNet licence is copied next to it as ``LICENSE``.

Data-file line format (wndb(5WN)): ``synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id...]
p_cnt ...``; ``w_cnt`` is two hexadecimal digits; lines starting with two spaces are the licence header.

Usage: python scripts/build_wordnet_corpus.py [--wordnet-dir /usr/share/wordnet] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from pathlib import Path

# WordNet's lexicographer files, numbered as in lexnames(5WN); the ``lexnames`` file itself is not
# installed by Debian's wordnet-base.
LEXNAMES: tuple[str, ...] = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)

_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_LICENSE_LINE = re.compile(r"^  \d+ ?(.*?)\s*$")


def parse_data_file(path: Path, pos: str) -> dict[str, list[str]]:
    """Map each lemma of a WordNet ``data.<pos>`` file to its categories, in first-seen order."""
    lemmas: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("  "):
                continue
            fields = line.split(" ")
            try:
                lex_filenum = int(fields[1])
                w_cnt = int(fields[3], 16)
                words = fields[4 : 4 + 2 * w_cnt : 2]
                category = LEXNAMES[lex_filenum]
            except (IndexError, ValueError) as exc:
                raise SystemExit(f"{path}:{lineno}: not a WordNet data line ({exc})") from exc
            if len(words) != w_cnt or not category.startswith("noun." if pos == "n" else "adj."):
                raise SystemExit(f"{path}:{lineno}: unexpected synset fields {fields[:6]}")
            for word in words:
                lemma = _ADJ_MARKER.sub("", word).replace("_", " ").strip()
                cats = lemmas.setdefault(lemma, [])
                if category not in cats:
                    cats.append(category)
    return lemmas


def read_license(path: Path) -> str:
    """The licence text from the header of a data file (lines ``  N text``)."""
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("  "):
                break
            match = _LICENSE_LINE.match(line)
            out.append(match.group(1) if match else "")
    return "\n".join(out).strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    default_out = Path(__file__).resolve().parents[1] / "raymmft" / "assets" / "wordnet"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)

    noun_file, adj_file = args.wordnet_dir / "data.noun", args.wordnet_dir / "data.adj"
    for f in (noun_file, adj_file):
        if not f.is_file():
            print(f"error: {f} not found (apt-get install -y wordnet-base)", file=sys.stderr)
            return 2
    nouns = parse_data_file(noun_file, "n")
    adjectives = parse_data_file(adj_file, "a")

    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / "corpus.tsv.gz"
    # mtime=0 makes the gzip bytes reproducible.
    with open(corpus, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for pos, table in (("n", nouns), ("a", adjectives)):
            for lemma, cats in table.items():
                gz.write(f"{pos}\t{lemma}\t{','.join(cats)}\n".encode())
    notice = (
        "The file corpus.tsv.gz in this directory lists the noun and adjective lemmas of WordNet 3.0\n"
        "with their lexicographer categories, extracted by scripts/build_wordnet_corpus.py from the\n"
        "data.noun and data.adj files of Debian's wordnet-base package. WordNet is distributed under\n"
        "the following licence:\n\n"
    )
    (args.out / "LICENSE").write_text(notice + read_license(noun_file), encoding="utf-8")
    print(
        f"wrote {corpus}: {len(nouns)} nouns, {len(adjectives)} adjectives, "
        f"{corpus.stat().st_size} bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
