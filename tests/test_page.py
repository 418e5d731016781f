"""The upload page's HTML: configuration embedded safely, nothing fetched from elsewhere."""
import json

from vsearch.page import PLACEHOLDER, render_page


def config_of(page: str) -> dict:
    return json.loads(page.split('type="application/json">', 1)[1].split("</script>", 1)[0])


def test_config_round_trips():
    config = {"title": "shop", "categories": ["hat", "t-shirt"], "max_upload_bytes": 1000, "max_k": 100,
              "default_k": 8, "items": 3}
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
