"""Reading a catalog manifest (vsearch.catalog.manifest): formats, types, checks, the folder shortcut."""

import json
import os

import pytest

from vsearch.catalog.manifest import Photo, catalog_files, read_manifest
from vsearch.errors import DataError

ROWS = [
    {
        "product_id": "P1",
        "image": "photos/p1-front.jpg",
        "category": "hats",
        "title": "Red cap",
        "price": 9.5,
        "in_stock": True,
        "stock": 3,
    },
    {
        "product_id": "P1",
        "image": "photos/p1-back.jpg",
        "category": "hats",
        "title": "Red cap",
        "price": 9.5,
        "in_stock": True,
        "stock": 3,
    },
    {
        "product_id": 7,
        "image": "gs://shop/p7.jpg",
        "category": "shoes",
        "title": "Boot",
        "price": 20,
        "in_stock": False,
        "stock": None,
    },
]
CSV = (
    "product_id,image,category,title,price,in_stock,stock\n"
    "P1,photos/p1-front.jpg,hats,Red cap,9.5,true,3\n"
    "P1,photos/p1-back.jpg,hats,Red cap,9.5,TRUE,3\n"
    "7,gs://shop/p7.jpg,shoes,Boot,20,False,\n"
)


def write_manifest(folder, fmt, rows=ROWS):
    path = folder / f"manifest.{fmt}"
    if fmt == "csv":
        path.write_text(CSV)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{**r, "product_id": str(r["product_id"])} for r in rows]), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_each_format_gives_the_same_photos_and_types(tmp_path, fmt):
    manifest = read_manifest(write_manifest(tmp_path, fmt))
    assert manifest.schema == {"title": "text", "price": "float", "in_stock": "bool", "stock": "int"}
    folder = str(tmp_path.resolve())
    assert manifest.photos == [
        Photo(
            "P1",
            "P1/photos/p1-front.jpg",
            os.path.join(folder, "photos", "p1-front.jpg"),
            "hats",
            {"title": "Red cap", "price": 9.5, "in_stock": True, "stock": 3},
        ),
        Photo(
            "P1",
            "P1/photos/p1-back.jpg",
            os.path.join(folder, "photos", "p1-back.jpg"),
            "hats",
            {"title": "Red cap", "price": 9.5, "in_stock": True, "stock": 3},
        ),
        Photo(
            "7",
            "7/gs://shop/p7.jpg",
            "gs://shop/p7.jpg",
            "shoes",
            {"title": "Boot", "price": 20.0, "in_stock": False, "stock": None},
        ),
    ]
    assert isinstance(manifest.photos[2].attributes["price"], float)
    assert all(Photo.from_dict(json.loads(json.dumps(p.to_dict()))) == p for p in manifest.photos)


def test_absolute_paths_and_csv_text_rules(tmp_path):
    photo = tmp_path / "elsewhere" / "a.jpg"
    path = tmp_path / "m.csv"
    path.write_text(f"product_id,image,category,sku,size,note\nA,{photo},,007,1,\nB,./b.jpg,x,012,2.5,  \n\n")
    manifest = read_manifest(path)
    assert manifest.schema == {"sku": "text", "size": "float", "note": "text"}
    assert [p.image for p in manifest.photos] == [str(photo), str(tmp_path.resolve() / "b.jpg")]
    assert [p.photo_id for p in manifest.photos] == [f"A/{photo.as_posix()}", "B/b.jpg"]
    assert manifest.photos[0].category == "" and manifest.photos[0].attributes == {
        "sku": "007",
        "size": 1.0,
        "note": None,
    }


@pytest.mark.parametrize("fmt, where, first", [("csv", "line 3", "line 2"), ("jsonl", "line 2", "line 1")])
def test_a_value_that_does_not_fit_its_column_names_file_row_and_column(tmp_path, fmt, where, first):
    rows = [dict(ROWS[0]), {**ROWS[1], "price": "about ten"}]
    path = write_manifest(tmp_path, fmt, rows)
    if fmt == "csv":
        path.write_text(
            CSV.splitlines()[0] + "\n" + CSV.splitlines()[1] + "\nP1,photos/p1-back.jpg,hats,Red cap,about ten,true,3\n"
        )
    with pytest.raises(
        DataError,
        match=rf"manifest.{fmt}: {where}: column 'price': 'about ten' is not a number; "
        r"the column holds float values \(its type comes from its first value, "
        rf"{first}\)",
    ):
        read_manifest(path)


def test_bools_and_nested_values_are_checked(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("product_id,image,category,in_stock\nA,a.jpg,x,true\nB,b.jpg,x,yes\n")
    with pytest.raises(DataError, match=r"m.csv: line 3: column 'in_stock': 'yes' is not true or false"):
        read_manifest(path)
    path = tmp_path / "m.jsonl"
    path.write_text('{"product_id": "A", "image": "a.jpg", "category": "x", "sizes": [1, 2]}\n')
    with pytest.raises(DataError, match=r"m.jsonl: line 1: column 'sizes': a list value"):
        read_manifest(path)
    path.write_text(
        '{"product_id": "A", "image": "a.jpg", "category": "x", "price": 1}\n'
        '{"product_id": "B", "image": "b.jpg", "category": "x", "price": "2"}\n'
    )
    with pytest.raises(DataError, match=r"line 2: column 'price': '2' is not a number"):  # a JSON string is text
        read_manifest(path)


def test_missing_columns_and_empty_required_values(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("product_id,path,title\nA,a.jpg,x\n")
    with pytest.raises(
        DataError,
        match=r"m.csv: missing column\(s\) image, category; a manifest needs "
        r"product_id, image, category",
    ):
        read_manifest(path)
    path.write_text("product_id,image,category\nA,a.jpg,x\n,b.jpg,x\n")
    with pytest.raises(DataError, match=r"m.csv: line 3: column 'product_id': expected text \(it may not be empty\)"):
        read_manifest(path)
    path.write_text("product_id,image,category\nA,a.jpg,x,extra\n")
    with pytest.raises(DataError, match="line 2: 4 fields, the header has 3"):
        read_manifest(path)
    path.write_text("product_id,image,category,title,title\nA,a.jpg,x,t,u\n")
    with pytest.raises(DataError, match=r"column\(s\) \['title'\] appear more than once"):
        read_manifest(path)
    path.write_text("product_id,image,category\n")
    with pytest.raises(DataError, match="no rows"):
        read_manifest(path)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"product_id": "A", "image": "a.jpg", "category": "x"}\n{"product_id": "B", "category": "x"}\n')
    with pytest.raises(DataError, match=r"m.jsonl: line 2: column 'image': expected text"):
        read_manifest(jsonl)


def test_duplicate_product_and_image_is_refused(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("product_id,image,category\nA,a.jpg,x\nB,a.jpg,x\nA,./a.jpg,x\n")
    with pytest.raises(DataError, match=r"m.csv: line 4: product 'A' lists image './a.jpg' again \(first at line 2\)"):
        read_manifest(path)
    path.write_text("product_id,image,category\na/b,c.jpg,x\na,b/c.jpg,x\n")
    with pytest.raises(DataError, match=r"line 3: photo id 'a/b/c.jpg' is also the id of line 2"):
        read_manifest(path)


def test_a_csv_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("product_id,image,category,title\nA,a.jpg,x,ok\nB,b.jpg,x,Caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"m.csv: line 3: not UTF-8 text \(byte \d+: .*\); save the file as UTF-8"):
        read_manifest(path)
    path.write_bytes(b"\xef\xbb\xbf" + b"product_id,image,category\nA,a.jpg,x\n")  # a BOM is fine
    assert [p.product_id for p in read_manifest(path).photos] == ["A"]


def test_unreadable_files_and_formats(tmp_path):
    (tmp_path / "m.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match="not a manifest"):
        read_manifest(tmp_path / "m.xlsx")
    with pytest.raises(DataError, match="no such manifest file or catalog folder"):
        read_manifest(tmp_path / "nothing")
    with pytest.raises(DataError, match="no such manifest file"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_manifest(tmp_path / "m.parquet")
    (tmp_path / "m.jsonl").write_text('{"product_id": "A"\n')
    with pytest.raises(DataError, match="line 1: not JSON"):
        read_manifest(tmp_path / "m.jsonl")


def test_a_folder_is_the_shortcut_with_catalog_ids(shop):
    manifest = read_manifest(shop)
    files = catalog_files(shop)
    assert [(p.product_id, p.photo_id, p.category, p.image) for p in manifest.photos] == [
        (i, i, c, str(path.resolve())) for path, c, i in files
    ]
    assert manifest.schema == {} and all(p.attributes == {} for p in manifest.photos)
    (shop / "hats" / "red.png").write_bytes(b"another red")
    with pytest.raises(DataError, match="one id 'hats/red' for two photos"):
        read_manifest(shop)


BASE = {"product_id": "P1", "image": "a.jpg", "category": "hats"}


def write_rows(folder, fmt, rows):
    """``rows`` (dicts) as a manifest of ``fmt``; CSV cells are written as given (text)."""
    path = folder / f"m.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    elif fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(out.getvalue())
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {name: [r[name] for r in rows] for name in rows[0]}
        big = {name for name, values in columns.items() if any(isinstance(v, int) and v >= 2**63 for v in values)}
        pq.write_table(pa.table({n: pa.array(v, pa.uint64() if n in big else None) for n, v in columns.items()}), path)
    return path


@pytest.mark.parametrize(
    "fmt, value, fragment",
    [
        ("jsonl", 10**400, "a whole number of about 401 digits is out of range"),
        ("jsonl", 2**63, "9223372036854775808 is out of range"),
        ("jsonl", -(2**63) - 1, "-9223372036854775809 is out of range"),
        ("csv", "9" * 400, "(400 digits) is out of range"),
        ("csv", "9" * 5000, "(5000 digits) is out of range"),
        ("csv", "-99999999999999999999", "-99999999999999999999 is out of range"),
        ("csv", "1e999", "'1e999' is too large for a number"),
        ("csv", "9" * 400 + ".5", "is too large for a number"),
        ("parquet", 2**64 - 1, "18446744073709551615 is out of range"),  # an unsigned 64-bit column
    ],
)
def test_a_number_no_store_can_hold_names_file_row_and_column(tmp_path, fmt, value, fragment):
    """Refused on reading, before anything is embedded or written (`index build`, `index upsert`)."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    rows = [{**BASE, "price": 1}, {**BASE, "image": "b.jpg", "price": value}]
    with pytest.raises(DataError) as error:
        read_manifest(write_rows(tmp_path, fmt, rows))
    message = str(error.value)
    assert message.startswith(f"{tmp_path}/m.{fmt}: ") and "column 'price': " in message and fragment in message
    assert "\n" not in message and len(message) < 400, message


def test_a_json_line_nested_too_deeply_is_one_line(tmp_path):
    deep = json.dumps(BASE)[:-1] + ', "size": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(DataError, match=r"m\.jsonl: line 2: JSON nested too deeply") as error:
        read_manifest(write_rows(tmp_path, "jsonl", [BASE, deep]))
    assert "\n" not in str(error.value)
    shallow = json.dumps(BASE)[:-1] + ', "size": ' + "[" * 500 + "]" * 500 + "}"
    with pytest.raises(DataError, match=r"line 1: column 'size': a list value \(\[\[\[") as error:
        read_manifest(write_rows(tmp_path, "jsonl", [shallow]))
    assert len(str(error.value)) < 300


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize(
    "product_id, fragment",
    [
        ("a\nb", "unprintable"),
        ("nul\x00", "unprintable"),
        ("bell\x07", "unprintable"),
        ("x" * 257, "over the limit of 256"),
        ("in\u2028side", "unprintable"),
    ],
)
def test_a_product_id_the_api_refuses_is_refused_in_every_manifest(tmp_path, fmt, product_id, fragment):
    """One rule for ids (vsearch.stores.validate.check_id): the API could never replace or delete such a product."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    rows = [{**BASE, "product_id": "fine"}, {**BASE, "product_id": product_id, "image": "b.jpg"}]
    with pytest.raises(DataError, match=f"m\\.{fmt}: (line|row) \\d+: column 'product_id': .*{fragment}") as error:
        read_manifest(write_rows(tmp_path, fmt, rows))
    assert "\n" not in str(error.value)


def test_a_folder_file_whose_id_breaks_the_rule_is_skipped_and_said_so(tmp_path):
    (tmp_path / "hats").mkdir()
    (tmp_path / "hats" / "good.jpg").write_bytes(b"x")
    (tmp_path / "hats" / "bad\nname.jpg").write_bytes(b"x")
    (tmp_path / "hats" / ("y" * 200)).mkdir()
    (tmp_path / "hats" / ("y" * 200) / ("z" * 60 + ".jpg")).write_bytes(b"x")  # the id "hats/yyy.../zzz...": 266
    manifest = read_manifest(tmp_path)
    assert [p.product_id for p in manifest.photos] == ["hats/good"]
    assert len(manifest.skipped) == 2 and all("rename the file" in why for why in manifest.skipped.values())
    assert any("unprintable" in why for why in manifest.skipped.values())
    assert any("over the limit" in why for why in manifest.skipped.values())
