from conftest import awkward_files

from vsearch.learn import datasets


def test_load_split_lists_files_in_dataset_order(image_root, tmp_path):
    awkward_files(image_root / "validation" / "green")
    split = datasets.load_split(image_root / "validation", tmp_path / "cache")
    assert split.root != image_root / "validation"  # a clean mirror was needed
    ds = datasets.image_dataset(split.root, split.class_names, 32, 4)
    assert list(ds.file_paths) == split.paths
    labels = [int(y) for _, batch in ds for y in batch]
    assert labels == split.labels.tolist() == ds.labels.tolist()  # read from the paths, no decoding
    cached = datasets.image_dataset(split.root, split.class_names, 32, 4, cache=True)
    assert cached.labels.tolist() == labels and list(cached.file_paths) == split.paths
    assert len(split.paths) == 9 + 5


def test_load_splits_gives_validation_the_train_classes_and_logs_what_was_left_out(image_root, tmp_path):
    from vsearch import config as c

    awkward_files(image_root / "validation" / "red")
    (image_root / "validation" / "purple").mkdir()  # not a train class: not read
    logged = []
    train, validation = datasets.load_splits(
        c.DataConfig(data_dir=str(image_root), feature_cache_dir=""), tmp_path / "clean", log=logged.append
    )
    assert train.class_names == validation.class_names == ["blue", "green", "red"]
    assert train.root == image_root / "train"  # nothing to leave out: read in place
    assert validation.root == tmp_path / "clean" / "validation"
    assert len(train.paths) == 18 and len(validation.paths) == 9 + 5
    assert sorted(line.split(": ")[0] for line in logged) == (
        ["  excluded (validation)"] * 4 + ["  normalised (validation)"] * 4
    )
