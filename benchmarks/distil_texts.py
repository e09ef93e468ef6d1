"""Texts in many languages for distilling the multilingual tower into a shallower one (``crossmodal train
--multilingual --layers N --distil-texts FILE``): Faker's word lists, which are real words of about 30 languages,
drawn into short sentences. They have no photos; the student learns only to give them the teacher tower's vectors,
so that it keeps what the teacher reads in languages the caption table lacks (docs/benchmarks.md).

    pip install faker   # not a dependency of crossmodal: only this script reads it
    python benchmarks/distil_texts.py --per-language 600 --out runs/distil-texts.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

SKIPPED = ("en_", "la")  # English is what the caption table holds most of; Latin is not a query language


def faker_locales(skipped: tuple[str, ...] = SKIPPED) -> list[str]:
    """The locales Faker has word lists for, but those whose names start with one of ``skipped``."""
    import faker.providers.lorem as lorem

    return sorted(p.name for p in Path(lorem.__file__).parent.iterdir()
                  if p.is_dir() and not p.name.startswith(("_", *skipped)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-language", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("runs/distil-texts.txt"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from faker import Faker

    locales = faker_locales()
    lines = []
    for locale in locales:
        fake = Faker(locale)
        fake.seed_instance(args.seed)
        for i in range(args.per_language):
            words = 3 + i % 10  # 3-12 words: query-length text
            lines.append(" ".join(fake.sentence(nb_words=words).split()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    texts = list(dict.fromkeys(lines))  # a small word list draws some sentences twice
    args.out.write_text("\n".join(texts) + "\n", encoding="utf-8")
    print(f"{len(texts)} texts in {len(locales)} languages -> {args.out}: {', '.join(locales)}")


if __name__ == "__main__":
    main()
