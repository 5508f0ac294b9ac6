"""Regenerate good/faq-indentation.pdf and bad/broken.pdf (dev-time only).

Needs fpdf2 2.8.9, which is NOT a project dependency:

    pip install --target /tmp/fpdf_gen fpdf2==2.8.9
    PYTHONPATH=/tmp/fpdf_gen python tests/data/docs/make_pdf.py

The output is byte-for-byte reproducible (fixed creation date, no file id).
"""

from datetime import UTC, datetime
from pathlib import Path

from fpdf import FPDF

HERE = Path(__file__).parent

PAGE_1 = (
    "Why does Python use indentation for grouping of statements?",
    "Guido van Rossum believes that using indentation for grouping is extremely "
    "elegant and contributes a lot to the clarity of the average Python program. "
    "Most people learn to love this feature after a while.\n\n"
    "Since there are no begin/end brackets there cannot be a disagreement between "
    "grouping perceived by the parser and the human reader.",
)
PAGE_2 = (
    "Why are colons required for the if/while/def/class statements?",
    "The colon is required primarily to enhance readability (one of the results "
    "of the experimental ABC language). Another minor reason is that the colon "
    "makes it easier for editors with syntax highlighting; they can look for "
    "colons to decide when indentation needs to be increased instead of having "
    "to do a more elaborate parsing of the program text.",
)
FOOTER = "From the Python 3.11 Design and History FAQ (PSF License; see SOURCE.md)."


def main() -> None:
    pdf = FPDF(format="A5")
    pdf.set_creation_date(datetime(2026, 1, 1, tzinfo=UTC))
    pdf.set_producer("fpdf2 (tests/data/docs/make_pdf.py)")
    pdf.set_title("Python Design FAQ excerpt")
    for heading, body in (PAGE_1, PAGE_2):
        pdf.add_page()
        pdf.set_font("Helvetica", style="B", size=12)
        pdf.multi_cell(0, 6, heading)
        pdf.ln(3)
        pdf.set_font("Helvetica", size=10)
        pdf.multi_cell(0, 5, body)
        pdf.ln(3)
        pdf.set_font("Helvetica", style="I", size=8)
        pdf.multi_cell(0, 4, FOOTER)
    data = bytes(pdf.output())
    (HERE / "good" / "faq-indentation.pdf").write_bytes(data)
    # Truncated: the cross-reference table, trailer and half the objects are gone.
    (HERE / "bad" / "broken.pdf").write_bytes(data[: len(data) // 3])


if __name__ == "__main__":
    main()
