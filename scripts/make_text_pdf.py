#!/usr/bin/env python3
"""Writes a plain PDF of text files (one Helvetica text page per 60 wrapped lines), with nothing
but the standard library: a PDF made from text we own, for scripts/bench_clara_learning.sh.

Usage: make_text_pdf.py OUT.pdf FILE [FILE ...]
Lines are wrapped at 95 characters; characters outside Latin-1 become '?'; PDF string delimiters
are escaped. Each file starts on a new page.
"""
import sys
import textwrap


def escape(line):
    line = line.encode("latin-1", "replace").decode("latin-1")
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pages_of(paths, lines_per_page=60, width=95):
    pages = []
    for path in paths:
        lines = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for raw in f.read().splitlines():
                wrapped = textwrap.wrap(raw, width=width) or [""]
                lines.extend(wrapped)
        for i in range(0, max(len(lines), 1), lines_per_page):
            pages.append(lines[i:i + lines_per_page])
    return pages


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: make_text_pdf.py OUT.pdf FILE [FILE ...]")
    out, paths = sys.argv[1], sys.argv[2:]
    pages = pages_of(paths)
    objects = []  # bodies of objects 1..N
    objects.append("<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>")
    font_id = 3 + 2 * len(pages)
    for i, lines in enumerate(pages):
        content_id = 4 + 2 * i
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {content_id} 0 R >>")
        stream = "BT /F1 10 Tf 12 TL 40 760 Td\n" + "".join(f"({escape(l)}) Tj T*\n" for l in lines) + "ET"
        data = stream.encode("latin-1")
        objects.append(f"<< /Length {len(data)} >>\nstream\n{stream}\nendstream")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    body = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for n, obj in enumerate(objects, start=1):
        offsets.append(len(body))
        body += f"{n} 0 obj\n{obj}\nendobj\n".encode("latin-1")
    xref = len(body)
    body += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    body += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    body += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    with open(out, "wb") as f:
        f.write(body)
    print(f"{out}: {len(pages)} pages from {len(paths)} files")


if __name__ == "__main__":
    main()
