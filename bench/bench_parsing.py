"""Parse throughput of the router's parser: stdlib path vs fast path, on the same mail.

No broker needed: this measures parsing alone (one core, in process). Rows:

- ``router stdlib``: ``parse_email(path="stdlib")``, the fallback path;
- ``router auto``: ``parse_email()`` as the router calls it (fast path where its checks hold);
- ``fast_mail_parser bare``: the Rust parser alone (the ceiling of the fast path);
- ``stdlib policy.default bare``: ``BytesParser(policy=policy.default).parsebytes`` alone.

Corpora: the committed real-world corpus (services/router/tests/corpus, 46 mails) and 200
generated ~25 KB mails (text + html alternative, a small attachment). Each measurement runs
for about ``SECONDS`` of wall time. Run: ``uv run --frozen python bench/bench_parsing.py``.
"""

from __future__ import annotations

import os
import time
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING

import fast_mail_parser

from router.parsing import parse_email

if TYPE_CHECKING:
    from collections.abc import Callable

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
CORPUS = Path(__file__).parent.parent / "services/router/tests/corpus"


def generated(count: int = 200, size: int = 25_000) -> list[bytes]:
    words = [
        "order",
        "invoice",
        "delivery",
        "refund",
        "thanks",
        "please",
        "help",
        "account",
        "shipping",
        "status",
    ]
    mails = []
    for i in range(count):
        text = " ".join(words[(i + j) % len(words)] for j in range(size // 14))
        message = EmailMessage()
        message["From"] = f"Customer {i} <c{i}@example.com>"
        message["To"] = "support@shop.example"
        message["Subject"] = f"Question {i} about my order"
        message["Message-ID"] = f"<m{i}@example.com>"
        message["Date"] = "Mon, 30 Nov 2026 10:00:00 +0100"
        message.set_content(text)
        message.add_alternative(f"<html><body><p>{text}</p></body></html>", subtype="html")
        message.add_attachment(b"%PDF-1.4" + bytes(2_000), maintype="application",
                               subtype="pdf", filename=f"invoice-{i}.pdf")  # fmt: skip
        mails.append(message.as_bytes())
    return mails


def bare_fast(raw: bytes) -> object:
    """The Rust parser alone; a message it refuses counts (it would go to the fallback)."""
    try:
        return fast_mail_parser.parse_email(raw)
    except fast_mail_parser.ParseError as exc:
        return exc


def rate(parse: Callable[[bytes], object], mails: list[bytes]) -> float:
    """Messages per second over about SECONDS (whole passes over the corpus)."""
    for raw in mails:  # warm-up pass
        parse(raw)
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        for raw in mails:
            parse(raw)
        done += len(mails)
    return done / (time.perf_counter() - start)


def main() -> None:
    corpora = {
        "real-world corpus": [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))],
        "generated 25 KB": generated(),
    }
    stdlib = BytesParser(policy=policy.default)
    rows: list[tuple[str, str, float, str]] = []
    for corpus_name, mails in corpora.items():
        fast_share = sum(parse_email(m).parser != "stdlib" for m in mails) / len(mails)
        kb = sum(map(len, mails)) / len(mails) / 1024
        label = f"{corpus_name} ({len(mails)} mails, avg {kb:.1f} KB)"
        ours_stdlib = rate(lambda m: parse_email(m, path="stdlib"), mails)
        ours_auto = rate(parse_email, mails)
        rows.extend([
            (label, "router stdlib path", ours_stdlib, "1.0x"),
            (label, f"router auto ({fast_share:.0%} Rust)", ours_auto,
             f"{ours_auto / ours_stdlib:.1f}x"),
            (label, "fast_mail_parser bare", rate(bare_fast, mails),
             "(ceiling)"),
            (label, "stdlib policy.default bare", rate(stdlib.parsebytes, mails), "(peer)"),
        ])  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"{'corpus':<{width}}  {'parser':<28} {'msg/s':>10}  vs stdlib path")
    for corpus_name, parser, value, ratio in rows:
        print(f"{corpus_name:<{width}}  {parser:<28} {value:>10,.0f}  {ratio}")
    print(f"(one core, in process, ~{SECONDS:.0f} s per row; shared machine: figures are noisy)")


if __name__ == "__main__":
    main()
