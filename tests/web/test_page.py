"""The upload page's HTML: configuration embedded safely, nothing fetched from elsewhere."""

import json

from vsearch.web.page import PLACEHOLDER, filter_facets, render_page


def config_of(page: str) -> dict:
    return json.loads(page.split('type="application/json">', 1)[1].split("</script>", 1)[0])


def test_config_round_trips():
    config = {
        "title": "shop",
        "categories": ["hat", "t-shirt"],
        "max_upload_bytes": 1000,
        "max_k": 100,
        "default_k": 8,
        "items": 3,
    }
    page = render_page(config)
    assert PLACEHOLDER not in page and config_of(page) == config


def test_category_names_cannot_close_the_script():
    page = render_page({"title": "x", "categories": ["</script><script>alert(1)</script>", "a&b"]})
    assert "<script>alert(1)" not in page
    assert config_of(page)["categories"] == ["</script><script>alert(1)</script>", "a&b"]


def test_page_is_self_contained():
    page = render_page({})
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert 'src="http' not in page and "fonts.googleapis" not in page
    # results are built with textContent: data never goes through innerHTML
    assert "innerHTML" not in page


# ---------------------------------------------------------------- filter controls from the catalog


def products(*rows):
    from vsearch.stores import Product

    return [Product(f"p{i}", "c", attributes) for i, attributes in enumerate(rows)]


SCHEMA = {"brand": "text", "price": "float", "stock": "int", "in_stock": "bool", "title": "text"}


def test_facets_describe_each_attribute_by_its_type():
    rows = products(
        {"brand": "zeta", "price": 12.5, "stock": 3, "in_stock": True, "title": "a"},
        {"brand": "acme", "price": 4.0, "stock": None, "in_stock": False, "title": "a"},
        {"brand": "zeta", "price": None, "stock": 9, "title": "b"},
    )
    assert filter_facets(rows, SCHEMA) == [
        {"name": "brand", "type": "text", "values": ["acme", "zeta"]},
        {"name": "price", "type": "float", "min": 4.0, "max": 12.5},
        {"name": "stock", "type": "int", "min": 3, "max": 9},
        {"name": "in_stock", "type": "bool"},
        {"name": "title", "type": "text", "values": ["a", "b"]},
    ]


def brands(distinct: int, each: int) -> list:
    return products(*({"brand": f"b{i}"} for i in range(distinct) for _ in range(each)))


def test_text_with_too_many_values_gets_no_control():
    assert filter_facets(brands(31, 2), {"brand": "text"}) == []
    assert filter_facets(brands(30, 2), {"brand": "text"}) == [
        {"name": "brand", "type": "text", "values": sorted(f"b{i}" for i in range(30))}
    ]
    assert filter_facets(brands(4, 2), {"brand": "text"}, max_values=3) == []


def test_text_that_names_each_product_gets_no_control():
    """Titles and URLs: one value per product filters nothing (a handful still gets checkboxes)."""
    assert filter_facets(brands(10, 1), {"brand": "text"}) == []
    assert filter_facets(brands(5, 1), {"brand": "text"})[0]["values"] == [f"b{i}" for i in range(5)]


def test_attributes_nobody_has_yet_keep_their_control_where_it_means_something():
    assert filter_facets([], {"price": "float", "in_stock": "bool", "brand": "text"}) == [
        {"name": "price", "type": "float"},
        {"name": "in_stock", "type": "bool"},
    ]


def test_the_page_builds_filter_controls_and_sends_them():
    page = render_page({})
    assert 'id="filters"' in page and 'body.append("filter", JSON.stringify(filter))' in page
    for control in ('"checkbox"', '"number"', '["true", "yes"]'):
        assert control in page
