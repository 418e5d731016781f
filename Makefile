# vsearch: every target creates and reuses the virtual environment by itself.
#   make demo    data -> train -> siamese -> eval, end to end
#   make test    the test suite (no network); make test-fast, the edit-test loop; make lint
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
VSEARCH := $(VENV)/bin/vsearch
SHARED ?= ../shared
# Offline copies, used when present: the dataset and the ImageNet weights Keras would download.
SOURCE ?= $(if $(wildcard $(SHARED)/datasets/clothing-dataset-small/train),$(SHARED)/datasets/clothing-dataset-small,)
SHARED_WEIGHTS := $(SHARED)/keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
KERAS_HOME ?= $(CURDIR)/.cache/keras
export KERAS_HOME
export TF_CPP_MIN_LOG_LEVEL ?= 2
PRESET ?= default
ARGS ?=

INDEX ?= saved_models/catalog.vsi
# Real phone photos: the Grocery Store Dataset as manifests (make grocery), measured by make eval-real.
GROCERY_SRC ?= $(SHARED)/datasets/grocery-store-dataset
GROCERY ?= data/grocery
EVAL_MODEL ?= saved_models/embedding
CATALOG ?= data/photos/train
PORT ?= 8000

.PHONY: help venv weights data train siamese eval demo grocery grocery-train eval-real index products serve tflite test test-fast lint test-integration docs screenshot notebook clean

help:
	@echo "make demo   - data, train, siamese, eval end to end (SOURCE=DIR for a local dataset copy)"
	@echo "make test   - run the tests (make test-fast: the quick subset; make lint: ruff, mypy, import contracts)"
	@echo "make data | train | siamese | eval | index | serve | tflite | docs | notebook | test-integration | clean"
	@echo "make grocery eval-real - real phone photos (Grocery Store Dataset) against its catalog: reports/real-*.md"
	@echo "make grocery-train - both stages on the grocery train photos: saved_models/grocery/embedding"
	@echo "benchmarks: $(PY) -m bench.<name> | experiments.<name> (docs/benchmarks.md)"

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,beam]"
	touch $@

venv: $(VENV)/.installed

# Keras looks for its download in $KERAS_HOME/models; link the local copy there when there is one.
weights:
	@mkdir -p "$(KERAS_HOME)/models"
	@if [ -f "$(SHARED_WEIGHTS)" ] && [ ! -e "$(KERAS_HOME)/models/$(notdir $(SHARED_WEIGHTS))" ]; then \
		ln -s "$(abspath $(SHARED_WEIGHTS))" "$(KERAS_HOME)/models/" && echo "linked $(SHARED_WEIGHTS) into $(KERAS_HOME)/models"; fi

data: venv
	$(VSEARCH) data $(if $(SOURCE),--source "$(SOURCE)")

train: venv weights
	$(VSEARCH) train --preset $(PRESET) $(ARGS)

siamese: venv
	$(VSEARCH) siamese --preset $(PRESET) $(ARGS)

eval: venv weights
	$(VSEARCH) eval --preset $(PRESET) $(ARGS)

demo: data train siamese eval $(if $(wildcard $(GROCERY_SRC)/classes.csv),eval-real,)

# The Grocery Store Dataset as manifests: catalog.csv (the iconic images), train.csv, queries.csv
# (the val photos) and catalog_plus_train.csv (the train photos as further photos of their products).
grocery: venv
	$(PY) -m vsearch.learn.layouts grocery "$(GROCERY_SRC)" $(GROCERY)

# Both stages on products with several photos (the grocery preset): the manifests' training
# folders (a tenth of each product's train photos held out for validation; queries.csv stays
# unseen), then saved_models/grocery/{classifier,embedding}. Measure with
# make eval-real EVAL_MODEL=saved_models/grocery/embedding.
grocery-train: venv weights
	@test -f $(GROCERY)/train.csv || $(MAKE) grocery
	$(VSEARCH) data --catalog $(GROCERY)/catalog.csv --photos $(GROCERY)/train.csv --dest $(GROCERY)/photos
	$(VSEARCH) train --preset grocery
	$(VSEARCH) siamese --preset grocery

# Real photos against (a) the iconic images only, (b) the iconic images plus the train photos:
# the served road (the search defaults; ARGS="--preset thorough" for the regions), plain cosine
# and frozen ImageNet features, overall and per category.
eval-real: venv weights
	@test -f $(GROCERY)/queries.csv || $(MAKE) grocery
	$(VSEARCH) eval --queries $(GROCERY)/queries.csv --catalog $(GROCERY)/catalog.csv --model $(EVAL_MODEL) \
		--out reports/real-grocery-iconic.md $(ARGS)
	$(VSEARCH) eval --queries $(GROCERY)/queries.csv --catalog $(GROCERY)/catalog_plus_train.csv --model $(EVAL_MODEL) \
		--out reports/real-grocery-all.md $(ARGS)

# The shop's catalog index (FAISS) over CATALOG, then the upload page on 127.0.0.1:$(PORT).
index: venv
	$(VSEARCH) index build $(CATALOG) --store $(INDEX) $(ARGS)

# A demo product catalog: each clothing photo a product of 3 photos (original, mirrored, cropped)
# with seeded attributes (title, price, brand, colour, in_stock); data/products/manifest.csv.
products: venv
	@test -d data/photos/train || $(MAKE) data
	$(PY) -m vsearch.catalog.demo data/photos/train data/products $(ARGS)

serve: venv
	@test -f $(INDEX) || $(MAKE) index
	$(VSEARCH) serve --store $(INDEX) --port $(PORT) $(ARGS)

# LiteRT/TFLite exports of the embedding model: float32 and int8 (calibrated on the catalog).
tflite: venv
	$(VSEARCH) export --format tflite --quantize none
	$(VSEARCH) export --format tflite --quantize int8

test: venv
	$(PY) -m pytest -q

# The edit-test loop: everything but the tests marked slow (training, subprocess servers, browsers).
test-fast: venv
	$(PY) -m pytest -q -m "not slow and not integration"

# The rules kept by tools: lint and format (ruff), types (mypy), the wings' import contract.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test-integration: venv weights
	VSEARCH_INTEGRATION=1 $(PY) -m pytest -q -m integration

# The pictures the README shows, from the latest real `make eval`.
docs:
	@test -f reports/retrieval.png || { echo "run make eval first"; exit 2; }
	mkdir -p docs
	cp reports/retrieval.png reports/retrieval_grid.png reports/embedding_map.png reports/customer_photo.png reports/reliability.png docs/
	cp reports/eval.md docs/eval.md
	cp saved_models/classifier/training_curves.png saved_models/classifier/confusion_matrix.png docs/

# docs/web.png: the upload page over the real index, in headless Debian Chromium.
screenshot: venv
	@test -f $(INDEX) || $(MAKE) index
	$(PY) docs/make_screenshot.py --store $(INDEX)

# Re-execute the walkthrough notebook on the artifacts of the last real run (committed outputs).
notebook: venv
	$(PY) notebooks/run_notebook.py --inplace

clean:
	rm -rf $(VENV) .cache .pytest_cache reports/* saved_models/smoke
