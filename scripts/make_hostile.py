#!/usr/bin/env python3
"""Writes the small hostile inbox corpus into tests/fixtures/hostile/ (standard library only).

Run from the repository root: `python3 scripts/make_hostile.py`. The files are committed; the large hostile
files (zip bomb, 10 MB cell, 1 GiB-class sheets) are generated at test time by tests/hostile.rs instead, and
so are the directory named `x.csv` and the symlink pointing outside the inbox (git cannot carry them safely).
"""
import os
import shutil
import zipfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hostile")
SAMPLE_XLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "xlsx",
                          "vttl_sample.xls")

CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    '</Types>')
ROOT_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
    'Target="xl/workbook.xml"/></Relationships>')
WORKBOOK = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="TI" sheetId="1" r:id="rId1"/></sheets></workbook>')
WORKBOOK_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" '
    'Target="worksheets/sheet1.xml"/>'
    '<Relationship Id="rId2" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" '
    'Target="sharedStrings.xml"/></Relationships>')
NS = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'


def sheet(rows_xml, dimension="A1:B3", prolog=""):
    return (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>{prolog}<worksheet {NS}>'
            f'<dimension ref="{dimension}"/><sheetData>{rows_xml}</sheetData></worksheet>')


def inline(ref, text):
    return f'<c r="{ref}" t="inlineStr"><is><t>{text}</t></is></c>'


VTTL_ROWS = (f'<row r="1">{inline("A1", "Scanned Item")}{inline("B1", "WHOIS")}</row>'
             f'<row r="2">{inline("A2", "192.0.2.20")}</row>')


def put(z, part, text):
    """Adds a deflated entry with a fixed time stamp, so regenerating gives the same bytes."""
    info = zipfile.ZipInfo(part, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(info, text)


def xlsx(name, sheet_xml, shared=None, extra=None, workbook=WORKBOOK):
    with zipfile.ZipFile(os.path.join(ROOT, name), "w", zipfile.ZIP_DEFLATED) as z:
        put(z, "[Content_Types].xml", CONTENT_TYPES)
        put(z, "_rels/.rels", ROOT_RELS)
        put(z, "xl/workbook.xml", workbook)
        put(z, "xl/_rels/workbook.xml.rels", WORKBOOK_RELS)
        put(z, "xl/worksheets/sheet1.xml", sheet_xml)
        if shared is not None:
            put(z, "xl/sharedStrings.xml", shared)
        for part, text in (extra or {}).items():
            put(z, part, text)


def write(name, data):
    with open(os.path.join(ROOT, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


def main():
    readme = os.path.join(ROOT, "README.md")
    kept = open(readme, "rb").read() if os.path.exists(readme) else None
    # Found by `cargo fuzz run xlsx_reader` (a looping sector chain in a 6 KB OLE2 file); kept as it was found.
    found = os.path.join(ROOT, "fuzz_cyclic_fat.xls")
    fuzz_found = open(found, "rb").read() if os.path.exists(found) else None
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    if kept is not None:
        write("README.md", kept)
    if fuzz_found is not None:
        write("fuzz_cyclic_fat.xls", fuzz_found)
    good_csv = '"Scanned Item","WHOIS"\r\n"192.0.2.20",""\r\n'

    # --- XLSX: valid baseline, then damaged copies of it.
    xlsx("valid.xlsx", sheet(VTTL_ROWS))
    with open(os.path.join(ROOT, "valid.xlsx"), "rb") as f:
        valid = f.read()
    write("truncated_half.xlsx", valid[: len(valid) // 2])
    write("truncated_no_central_directory.xlsx", valid[:-30])
    flipped = bytearray(valid)
    sheet_at = valid.find(b"xl/worksheets/sheet1.xml") + 40
    for i in range(sheet_at, min(sheet_at + 16, len(flipped))):
        flipped[i] ^= 0x5A
    write("corrupt_deflate.xlsx", bytes(flipped))
    write("not_a_zip.xlsx", "this is plain text, not a workbook\n")
    write("empty.xlsx", b"")
    write("zip_magic_only.xlsx", b"PK\x03\x04" + b"\x00" * 26)
    with zipfile.ZipFile(os.path.join(ROOT, "zip_without_workbook.xlsx"), "w") as z:
        put(z, "hello.txt", "no workbook here")
    xlsx("missing_sheet_part.xlsx", sheet(VTTL_ROWS),
         workbook=WORKBOOK.replace('r:id="rId1"', 'r:id="rId9"'))
    # Maximum declared dimensions (17 billion cells) with two real rows.
    xlsx("max_dimensions.xlsx", sheet(VTTL_ROWS, dimension="A1:XFD1048576"))
    # One cell at the very last position of the grid, and one beyond it.
    xlsx("last_cell_of_grid.xlsx", sheet(VTTL_ROWS + f'<row r="1048576">{inline("XFD1048576", "x")}</row>'))
    xlsx("beyond_grid.xlsx", sheet(VTTL_ROWS + f'<row r="1048577">{inline("XFE1048577", "x")}</row>'))
    # XML entity tricks: external entity (XXE), billion laughs, entities in shared strings and the workbook.
    xxe = '<!DOCTYPE worksheet [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    xlsx("xxe_external_entity.xlsx",
         sheet(VTTL_ROWS.replace("192.0.2.20", "&xxe;"), prolog=xxe))
    laughs = '<!DOCTYPE sst [<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)) + ']>'
    shared = (f'<?xml version="1.0" encoding="UTF-8"?>{laughs}<sst {NS} count="2" uniqueCount="2">'
              '<si><t>Scanned Item</t></si><si><t>&j;</t></si></sst>')
    xlsx("billion_laughs.xlsx",
         sheet('<row r="1"><c r="A1" t="s"><v>0</v></c></row><row r="2"><c r="A2" t="s"><v>1</v></c></row>'),
         shared=shared)
    xlsx("entity_in_workbook.xlsx", sheet(VTTL_ROWS),
         workbook=WORKBOOK.replace("<workbook", xxe.replace("worksheet", "workbook") + "<workbook", 1)
         .replace('name="TI"', 'name="&xxe;"'))
    xlsx("shared_string_index_out_of_range.xlsx",
         sheet('<row r="1"><c r="A1" t="s"><v>0</v></c></row><row r="2"><c r="A2" t="s"><v>99999</v></c></row>'),
         shared=f'<sst {NS}><si><t>Scanned Item</t></si></sst>')
    xlsx("bad_cell_refs.xlsx",
         sheet('<row r="1"><c r="A1" t="inlineStr"><is><t>Scanned Item</t></is></c></row>'
               '<row r="-5"><c r="ZZZZZZ0" t="n"><v>not a number</v></c><c r="" t="b"><v>7</v></c>'
               '<c r="A2" t="d"><v>yesterday</v></c><c r="B2" t="e"><v>#BOGUS!</v></c></row>'))
    xlsx("malformed_xml.xlsx", sheet(VTTL_ROWS).replace("</sheetData>", "<row><c><v>1</c></sheetData>"))
    xlsx("deeply_nested_xml.xlsx",
         sheet(VTTL_ROWS + "<row r=\"3\">" + "<x>" * 20000 + "</x>" * 20000 + "</row>"))
    # --- XLS: truncated and corrupt.
    with open(SAMPLE_XLS, "rb") as f:
        xls = f.read()
    write("truncated.xls", xls[: len(xls) // 2])
    write("corrupt_ole2.xls", xls[:512] + bytes((b * 7 + 13) & 0xFF for b in xls[512:4096]))
    write("ole2_magic_only.xls", b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1" + b"\x00" * 504)
    write("html_saved_as.xls", "<html><body><table><tr><td>Scanned Item</td></tr>"
                               "<tr><td>192.0.2.20</td></tr></table></body></html>")
    write("zip_named.xls", valid)
    # --- CSV.
    write("empty.csv", b"")
    write("non_utf8_junk.csv", bytes((i * 73 + 41) & 0xFF for i in range(4096)))
    write("nul_bytes.csv", b'"Scanned Item","WHOIS"\r\n"192.0.2.20\x00\x00","\x00"\r\n\x00\x00\x00\r\n')
    write("elf_named.csv", b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56 + b"\x01\x00\x3e\x00")
    write("unbalanced_quotes.csv", '"Scanned Item","WHOIS"\r\n"192.0.2.20,"\r\n"192.0.2.21","x\r\n')
    write("quote_inside_unquoted.csv", 'Scanned Item,WHOIS\r\n192.0.2.20,ab"cd\r\n19"2.0.2.21,\r\n')
    write("utf16_odd_length.csv", b"\xff\xfe" + '"Scanned Item"\r\n"192.0.2.20"\r\n'.encode("utf-16-le") + b"\x00")
    write("bom_only.csv", b"\xef\xbb\xbf")
    write("only_newlines.csv", b"\r\n\n\r\n\n")
    write("header_only.csv", '"Scanned Item","WHOIS"\r\n')
    write("not_vttl.csv", '"Name","Value"\r\n"a","b"\r\n')
    write("too_many_columns.csv", ",".join(["Scanned Item"] + ["c"] * 20000) + "\r\n192.0.2.20\r\n")
    write("xlsx_named.csv", valid)
    write("formulas_in_input.csv",
          '"Scanned Item","WHOIS"\r\n"=cmd|\' /C calc\'!A0",""\r\n"192.0.2.20","=HYPERLINK(""x"")"\r\n')
    write("name with spaces.csv", good_csv)
    write("ünïcödé 名前 ☣.csv", good_csv)
    write("-rf.csv", good_csv)
    write("--outbox=escape.csv", good_csv)
    write("..csv", good_csv)
    write("CON.csv", good_csv)
    write("UPPER.CSV", good_csv)
    os.makedirs(os.path.join(ROOT, "dir.csv"))
    write(os.path.join("dir.csv", "inside.txt"), "a directory whose name ends in .csv\n")


if __name__ == "__main__":
    main()
