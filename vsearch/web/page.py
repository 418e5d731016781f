"""The upload page of ``vsearch serve``: one self-contained HTML document, ``static/index.html``.

The file (package data) holds the page's inline CSS and JavaScript: no CDN, no web fonts, so
it works on a machine without internet. :func:`render_page` puts the page's configuration
(title, limits, categories, filter controls) into it as JSON; :class:`CatalogPage` keeps the
page of the catalog being served until the catalog changes.
The page posts the photo to ``/api/search`` and builds the result grid with DOM calls
(``textContent``, never ``innerHTML`` with data), so catalog titles cannot inject markup.
Each card is a product: its ``title`` attribute (else its id), the photo that matched, its
price and brand when it has them.

Filter controls are built from the catalog's attributes (:func:`filter_facets`, passed in
the page's config): checkboxes for a text attribute with few values, min/max for a number,
any/yes/no for a bool. Their choices go out as the ``filter`` JSON field, and a change
searches again.

Once a photo is chosen, dragging on it (mouse, pen or finger: pointer events) draws a box;
on release the search runs again on that part of the photo (``box=x0,y0,x1,y1``, fractions
of the photo as shown, which browsers show upright like the server reads it). The box stays
drawn on the photo until it is cleared or another photo is chosen. When the answer carries
a ``match`` verdict (``exact`` / ``similar`` / ``none`` with a ``confidence``: how likely
the first match is the very item), a banner says so; without one, nothing is shown.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path

PAGE_FILE = Path(__file__).parent / "static" / "index.html"
PLACEHOLDER = "__VSEARCH_CONFIG__"  # where static/index.html takes the page's configuration
MAX_FACET_VALUES = 30  # a text attribute with more values gets no control


def filter_facets(products: Iterable, schema: Mapping[str, str], max_values: int = MAX_FACET_VALUES) -> list[dict]:
    """The page's filter controls: per attribute of ``schema``, ``{"name", "type"}`` and

    * text: ``values`` (sorted) when the products hold at most ``max_values`` of them and they
      are not one per product (titles, URLs name a product; they filter nothing), else no control;
    * int / float: ``min`` and ``max`` of the values present (hints for the inputs);
    * bool: nothing more (any / yes / no).

    ``products``: :class:`vsearch.stores.Product` s (each read once).
    """
    texts: dict[str, dict[str, int]] = {n: {} for n, kind in schema.items() if kind == "text"}
    numbers: dict[str, list[float]] = {n: [] for n, kind in schema.items() if kind in ("int", "float")}
    for product in products:
        for name, value in product.attributes.items():
            if value is None:
                continue
            if name in texts and isinstance(value, str) and len(texts[name]) <= max_values:
                texts[name][value] = texts[name].get(value, 0) + 1
            elif (
                name in numbers
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                numbers[name].append(value)
    out = []
    for name, kind in schema.items():
        facet: dict[str, object] = {"name": name, "type": kind}
        if kind == "text":
            counts = texts[name]
            one_each = len(counts) > 5 and all(n == 1 for n in counts.values())
            if not counts or len(counts) > max_values or one_each:
                continue
            facet["values"] = sorted(counts)
        elif kind in ("int", "float") and numbers[name]:
            facet.update(min=min(numbers[name]), max=max(numbers[name]))
        out.append(facet)
    return out


def render_page(config: dict) -> str:
    """The page with ``config`` (title, categories, limits, catalog size, ``attributes``: the
    :func:`filter_facets`) embedded as JSON.

    ``<``, ``>`` and ``&`` are escaped in the JSON so a category name cannot close the
    script element.
    """
    data = json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return page_template().replace(PLACEHOLDER, data)


@functools.cache
def page_template() -> str:
    """``static/index.html``, read once."""
    return PAGE_FILE.read_text(encoding="utf-8")


class CatalogPage:
    """The page of the catalog being served, rebuilt once per change of it.

    ``config``: what every page of this server says (title, limits); the catalog's part
    (categories, size, filter controls: :func:`filter_facets`, which reads every product) is
    added and kept until a write through this server or a refresh that took in other
    writers' changes (:meth:`changed`).
    """

    def __init__(self, config: dict):
        self.config = dict(config)
        self.version = 0
        self._pages: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # searcher -> (version, page)
        self._lock = threading.Lock()

    def changed(self, *_) -> None:
        with self._lock:
            self.version += 1

    def html(self, searcher) -> str:
        version = self.version
        cached = self._pages.get(searcher)
        if cached is not None and cached[0] == version:
            return cached[1]
        store = searcher.store
        products = list(store.products())
        page = render_page(
            {
                **self.config,
                "categories": list(searcher.categories),
                "items": len(products),
                "attributes": filter_facets(products, store.schema),
            }
        )
        self._pages[searcher] = (version, page)
        return page
