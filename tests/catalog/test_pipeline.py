"""`vsearch embed` on Apache Beam's DirectRunner (vsearch.catalog.pipeline), and `index build --from-embeddings`."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import awkward_files, cosine, make_image_folder

from vsearch import cli
from vsearch.catalog.building import build_catalog, catalog_from_vectors
from vsearch.catalog.manifest import Photo, catalog_files
from vsearch.catalog.pipeline import embed_catalog, embed_rows, load_embeddings
from vsearch.embedder import embed_images
from vsearch.errors import DataError
from vsearch.litert import TFLiteEmbedder

PLANTED = ("corrupt", "truncated", "empty", "text")  # awkward_files that no road can read


@pytest.fixture
def shop_folder(tmp_path):
    """The tiny synthetic catalog plus one of each awkward file: (folder, the unreadable ones)."""
    folder = make_image_folder(tmp_path / "data") / "train"
    files = awkward_files(folder / "misc")
    return folder, {str(files[k].resolve()) for k in PLANTED}


def test_vectors_equal_embed_images_and_bad_photos_are_dead_letters(tiny, shop_folder, tmp_path):
    folder, planted = shop_folder
    summary = embed_catalog(folder, tiny["model"], str(tmp_path / "out"), batch_size=4)
    done = load_embeddings(tmp_path / "out")

    files = catalog_files(folder)
    ref = embed_images(tiny["saved"], [path for path, _, _ in files], batch_size=3)
    ref_vectors = {files[i][2]: ref.vectors[j] for j, i in enumerate(ref.good)}
    ids = [photo.photo_id for photo in done.photos]
    assert sorted(ids) == sorted(ref_vectors)
    assert cosine(done.vectors, np.stack([ref_vectors[i] for i in ids])).min() >= 0.9999
    assert done.dead_letters == ref.bad and set(done.dead_letters) == planted
    assert summary["counts"] == {"photos": len(files), "skipped": 0, "embedded": len(files) - 4, "dead_letters": 4}
    assert summary["fingerprint"] == tiny["saved"].fingerprint and summary["dim"] == tiny["saved"].dim
    photo = next(p for p in done.photos if p.photo_id == "blue/blue_0")
    assert photo == Photo("blue/blue_0", "blue/blue_0", str((folder / "blue" / "blue_0.jpg").resolve()), "blue", {})
    lines = (tmp_path / "out" / "dead_letters.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["image"] for line in lines) == sorted(planted)

    graph, report = catalog_from_vectors(
        done.photos, done.vectors, summary["fingerprint"], None, store=f"faiss:{tmp_path / 'graph.vsi'}", kind="hnsw"
    )
    assert graph.count() == (report.products, report.photos) == (len(ids), len(ids))
    assert graph.search(done.vectors[:1], 1)[0][0]["photo_id"] == ids[0]
    with pytest.raises(DataError, match="no vectors to index"):
        catalog_from_vectors([], done.vectors[:0], summary["fingerprint"], None, store=f"faiss:{tmp_path / 'none.vsi'}")


class CountingModel:
    """A stand-in model that records the batches it is given: the mean colour as a 3-d vector."""

    image_size, dim = 8, 3

    def __init__(self):
        self.batches = []

    def embed_pixels(self, pixels):
        self.batches.append(len(pixels))
        return pixels.mean(axis=(1, 2)) / 255


def test_embed_rows_keeps_unusable_photos_out_of_model_batches(shop_folder):
    folder, planted = shop_folder
    paths = [str(p) for p in sorted((folder / "red").iterdir())] + sorted(planted)
    rows = [{"image": path} for path in paths] + [{"image": "nowhere://bucket/p.jpg"}]
    model = CountingModel()
    out = embed_rows(model, rows, batch_size=2)

    assert [row for row, _, _ in out] == rows
    good = [n for n, (_, vector, _) in enumerate(out) if vector is not None]
    assert good == list(range(len(paths) - len(planted)))
    assert sum(model.batches) == len(good) and max(model.batches) == 2
    reasons = {row["image"]: why for row, vector, why in out if vector is None}
    assert set(reasons) == {*planted, "nowhere://bucket/p.jpg"}
    assert reasons[str(folder / "misc" / "empty.jpg")] == "file is empty (0 bytes)"
    assert reasons["nowhere://bucket/p.jpg"].startswith("cannot read the file")
    red = out[0][1]
    assert red[0] > red[1] and red[0] > red[2]


def search_ids(index, model, photo, capsys):
    assert cli.main(["search", str(photo), "--model", str(model), "--store", str(index), "-k", "5", "--json"]) == 0
    return [(m["id"], round(m["score"], 4)) for m in json.loads(capsys.readouterr().out)["matches"]]


def test_cli_embed_on_two_workers_then_index_and_search_like_build(tiny, shop_folder, tmp_path, capsys):
    folder, planted = shop_folder
    model, out = tiny["files"]["none"], tmp_path / "out"
    assert (
        cli.main(
            [
                "embed",
                str(folder),
                "--model",
                str(model),
                "--out",
                str(out),
                "--batch-size",
                "4",
                "--threads",
                "1",
                "--",
                "--runner",
                "DirectRunner",
                "--direct_num_workers",
                "2",
                "--direct_running_mode",
                "multi_processing",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"embedded {len(catalog_files(folder)) - 4} of {len(catalog_files(folder))} photo(s)" in printed
    assert "4 unusable photo(s)" in printed

    index = tmp_path / "from-embeddings.vsi"
    assert (
        cli.main(["index", "build", "--from-embeddings", str(out), "--store", str(index), "--model", str(model)]) == 0
    )
    assert "skipped 4 unusable photo(s)" in capsys.readouterr().out
    built = tmp_path / "built.vsi"
    build_catalog(TFLiteEmbedder(model), folder, f"faiss:{built}", kind="exact")[0].close()
    for photo in tiny["photos"][:3]:
        assert search_ids(index, model, photo, capsys) == search_ids(built, model, photo, capsys)

    # another model's vectors are refused, as an index built by another model is
    assert (
        cli.main(
            [
                "index",
                "build",
                "--from-embeddings",
                str(out),
                "--store",
                str(tmp_path / "x.vsi"),
                "--model",
                str(tiny["files"]["int8"]),
            ]
        )
        == 2
    )
    assert "embedded with model" in capsys.readouterr().err and not (tmp_path / "x.vsi").exists()


def write_manifest(tmp_path, folder):
    """Two products of two photos each (one photo missing), typed attributes."""
    photos = sorted(p.relative_to(tmp_path).as_posix() for p in (folder / "red").iterdir())
    path = tmp_path / "catalog.csv"
    path.write_text(
        "product_id,image,category,title,price,in_stock\n"
        f"P1,{photos[0]},red,Red cap,9.5,true\n"
        f"P1,{photos[1]},red,Red cap,9.5,true\n"
        f"P2,{photos[2]},red,Rose hat,12,false\n"
        "P2,gone/missing.jpg,red,Rose hat,12,false\n"
    )
    return path


def test_a_manifest_with_attributes_gives_typed_shards(tiny, shop_folder, tmp_path):
    folder, _ = shop_folder
    out = tmp_path / "out"
    embed_catalog(write_manifest(tmp_path, folder), tiny["files"]["none"], str(out), batch_size=2)
    summary = json.loads((out / "embeddings.json").read_text())
    assert summary["attributes"] == {"title": "text", "price": "float", "in_stock": "bool"}
    schema = pq.read_schema(out / summary["shards"][0])
    assert schema.field("vector").type == pa.list_(pa.float32(), tiny["saved"].dim)
    assert (schema.field("price").type, schema.field("in_stock").type) == (pa.float64(), pa.bool_())
    done = load_embeddings(out)
    assert sorted((p.product_id, p.attributes["price"], p.attributes["in_stock"]) for p in done.photos) == [
        ("P1", 9.5, True),
        ("P1", 9.5, True),
        ("P2", 12.0, False),
    ]
    assert list(done.dead_letters.values()) == ["no such file"]
    assert np.allclose(np.linalg.norm(done.vectors, axis=1), 1.0, atol=1e-5)

    # a second run into the same folder: its summary names its own shards, never the last run's
    (tmp_path / "one.csv").write_text(
        f"product_id,image,category\nP9,{(folder / 'blue' / 'blue_0.jpg').as_posix()},blue\n"
    )
    (out / "embeddings-00007-of-00009.parquet").write_bytes(b"a stale shard of an earlier run")
    embed_catalog(tmp_path / "one.csv", tiny["files"]["none"], str(out))
    assert [p.photo_id for p in load_embeddings(out).photos] == [f"P9/{(folder / 'blue' / 'blue_0.jpg').as_posix()}"]


def test_bad_inputs_are_refused_before_any_work(tiny, shop_folder, tmp_path):
    folder, _ = shop_folder
    out = tmp_path / "out"
    with pytest.raises(DataError, match="not Beam pipeline option.*--direct_num_worker\\b"):
        embed_catalog(folder, tiny["model"], str(out), beam_args=["--direct_num_worker", "2"])
    with pytest.raises(DataError, match="must be a local path on every worker"):
        embed_catalog(folder, "gs://bucket/embedding", str(out))
    (tmp_path / "m.csv").write_text("product_id,image,category,vector\nP1,a.jpg,x,1\n")
    with pytest.raises(DataError, match=r"attribute column\(s\) \['vector'\] would overwrite"):
        embed_catalog(tmp_path / "m.csv", tiny["model"], str(out))
    assert not out.exists()
    with pytest.raises(DataError, match="not the summary of a finished `vsearch embed` run"):
        load_embeddings(out)


def test_cli_usage_errors(tmp_path, capsys):
    assert cli.main(["index", "build", "--store", str(tmp_path / "i.vsi")]) == 2
    assert "or a catalog folder, or --from-embeddings" in capsys.readouterr().err
    assert (
        cli.main(
            ["index", "build", str(tmp_path), "--from-embeddings", str(tmp_path), "--store", str(tmp_path / "i.vsi")]
        )
        == 2
    )
    assert "give no manifest or folder" in capsys.readouterr().err
    assert cli.main(["embed", str(tmp_path), "--out", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # without embed, -- is not a way to pass options
        cli.main(["index", "info", "--store", "x.vsi", "--", "--runner", "DirectRunner"])
