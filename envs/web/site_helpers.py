"""VisualWebArena's ``func:`` helpers for its Magento (Shopping) and Postmill (Reddit) sites, our own code.

Page helpers read the graded page with the selectors of the real sites' markup (which the bundled sites
reproduce). REST helpers call Magento's REST API as VWA does: an admin token first (VWA's
``shopping_site_admin`` account unless told otherwise), then the orders or reviews endpoint, through the
browser context's request API. :func:`site_helpers` binds them to one task's site URLs for grading.

Where VWA's helpers misbehave, the ``fixed`` mode differs (listed in ``envs/web/evaluators.py`` and
docs/envs.md): the latest comment is found by comparing timestamps as numbers (VWA compares a
timezone-aware datetime with a naive one under
current Playwright, swallows the error and returns ``""``, so all its reddit comment targets fail; the
``official`` mode reproduces that), and equal timestamps go to the later comment on the page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

SHOPPING_ADMIN = ("admin", "admin1234")
OR_SEPARATOR = " |OR| "

_ORDER_PRODUCTS_JS = """
() => {
  const table = document.querySelector('#my-orders-table');
  if (!table) return [];
  return [...table.getElementsByTagName('tbody')].map((body) => {
    const product = {};
    for (const cell of body.getElementsByTagName('td')) {
      const key = cell.className.split(' ')[1];
      if (!key) continue;
      product[key] = cell.innerText;
      const options = cell.querySelector('dl');
      if (key === 'name' && options) {
        product.options = {};
        const items = [...options.children];
        for (let i = 0; i + 1 < items.length; i += 2) product.options[items[i].innerText] = items[i + 1].innerText;
      }
    }
    return product;
  });
}
"""

_PRODUCT_ATTRIBUTES_JS = """
(terms) => {
  const body = document.querySelector('#productDetails_detailBullets_sections1 > tbody');
  if (!body) return '';
  return [...body.children]
    .filter((row) => row.children.length > 1
      && terms.some((term) => row.children[0].innerText.toLowerCase().includes(term)))
    .map((row) => row.children[1].innerText)
    .join(', ');
}
"""

_PRICE_SELECTOR = (
    "#maincontent > div.columns > div > div.product-info-main > div.product-info-price > "
    "div.price-box.price-final_price > span > span"
)

_COMMENT_TREE_JS = """
() => {
  const text = (node, selector) => { const found = node.querySelector(selector); return found ? found.innerText : ''; };
  const build = (node, level) => {
    const time = node.querySelector('.comment__main > header > h1 > span > time');
    return {
      username: text(node, '.fg-inherit'),
      net_score: parseInt(text(node, '.vote__net-score')) || 0,
      content: text(node, '.comment__content'),
      time: time ? (Date.parse(time.dateTime) || 0) : 0,
      children: [...node.querySelectorAll('.comment')]
        .filter((child) => parseInt(child.getAttribute('data-level')) === level + 1)
        .map((child) => build(child, level + 1)),
    };
  };
  const root = document.querySelector('#main');
  return root ? build(root, 0) : null;
}
"""


_TEXT_OF_JS = "(selector) => { const found = document.querySelector(selector); return found ? found.innerText : ''; }"
_TITLE_OF_JS = "(selector) => { const found = document.querySelector(selector); return found ? found.title : ''; }"


def _evaluate(page: Any, script: str, argument: Any = None, default: Any = None) -> Any:
    try:
        return page.evaluate(script, argument) if argument is not None else page.evaluate(script)
    except Exception:
        return default


# -- Shopping pages ----------------------------------------------------------------------------------


def shopping_order_products(page: Any) -> list[dict[str, Any]]:
    """Every product row of an order page: name (with its options' text), sku, price, qty, subtotal, options."""
    return _evaluate(page, _ORDER_PRODUCTS_JS, default=[]) or []


def shopping_get_order_product_name_list(page: Any) -> str:
    return OR_SEPARATOR.join(product.get("name", "") for product in shopping_order_products(page))


def shopping_get_order_product_quantity(page: Any, sku: str) -> int:
    skus = [part.strip() for part in sku.split("|OR|")]
    for product in shopping_order_products(page):
        if product.get("sku", "").strip() in skus:
            found = re.search(r"Ordered\D*(\d+)", product.get("qty", ""))
            return int(found.group(1)) if found else 0
    return 0


def shopping_get_order_product_option(page: Any, sku: str, option_name: str) -> str:
    for product in shopping_order_products(page):
        if product.get("sku", "").strip() == sku:
            return str((product.get("options") or {}).get(option_name, ""))
    return ""


def shopping_get_product_attributes(page: Any, attribute: str) -> str:
    terms = [term.strip() for term in attribute.lower().split("|or|")]
    return str(_evaluate(page, _PRODUCT_ATTRIBUTES_JS, terms, default="") or "")


def shopping_get_product_price(page: Any) -> float:
    text = _evaluate(page, _TEXT_OF_JS, _PRICE_SELECTOR)
    try:
        return float(str(text or "")[1:].replace(",", ""))
    except ValueError:
        return 0


def shopping_get_num_reviews(page: Any) -> int:
    text = _evaluate(page, _TEXT_OF_JS, "#tab-label-reviews-title")
    parts = str(text or "").split(" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def shopping_get_rating_as_percentage(page: Any) -> float:
    title = _evaluate(page, _TITLE_OF_JS, ".rating-result")
    try:
        return float(str(title or "").replace("%", ""))
    except ValueError:
        return 0


def get_query_text_lowercase(page: Any, selector: str) -> str:
    from envs.web.grading import get_query_text

    return get_query_text(page, selector).lower()


# -- Shopping REST -----------------------------------------------------------------------------------


class MagentoApi:
    """Magento's REST API on one site, as VWA's graders call it (admin token, then a GET)."""

    def __init__(self, request: Any, base_url: str, admin: tuple[str, str] = SHOPPING_ADMIN) -> None:
        self.request = request
        self.base_url = base_url.rstrip("/")
        self.admin = admin

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        token = self.request.post(
            f"{self.base_url}/rest/default/V1/integration/admin/token",
            data={"username": self.admin[0], "password": self.admin[1]},
        )
        if not token.ok:
            raise ConnectionError(f"Magento admin token refused by {self.base_url}: HTTP {token.status}")
        response = self.request.get(
            f"{self.base_url}{path}", params=params or {}, headers={"Authorization": f"Bearer {token.json()}"}
        )
        if not response.ok:
            raise ConnectionError(f"{self.base_url}{path}: HTTP {response.status}")
        return response.json()

    def latest_order_url(self) -> str:
        params = {
            "searchCriteria[sortOrders][0][field]": "created_at",
            "searchCriteria[sortOrders][0][direction]": "DESC",
            "searchCriteria[pageSize]": "1",
        }
        order = self.get("/rest/V1/orders", params)["items"][0]
        return f"{self.base_url}/sales/order/view/order_id/{int(order['increment_id'])}/"

    def latest_review(self, sku: str) -> dict[str, Any]:
        reviews = self.get(f"/rest/V1/products/{sku}/reviews")
        return reviews[-1] if reviews else {}


def shopping_rest_helpers(api: MagentoApi) -> dict[str, Callable[..., Any]]:
    def review_field(read: Callable[[dict[str, Any]], Any]) -> Callable[[str], str]:
        def helper(sku: str) -> str:
            review = api.latest_review(sku)
            return str(read(review)) if review else ""

        return helper

    return {
        "shopping_get_latest_order_url": api.latest_order_url,
        "shopping_get_sku_latest_review_author": review_field(lambda review: review["nickname"]),
        "shopping_get_sku_latest_review_rating": review_field(lambda review: review["ratings"][0]["percent"]),
        "shopping_get_sku_latest_review_text": review_field(lambda review: review["detail"]),
        "shopping_get_sku_latest_review_title": review_field(lambda review: review["title"]),
    }


# -- Reddit (Postmill) pages ---------------------------------------------------------------------------


def reddit_get_post_comment_tree(page: Any) -> dict[str, Any]:
    """The post page's comments as a tree under the page root: username, net_score, content, time (ms)."""
    return _evaluate(page, _COMMENT_TREE_JS, default=None) or {}


def _latest_by(page: Any, username: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(latest comment of ``username``, its parent) by time; equal times go to the later one on the page."""
    best: tuple[float, int, dict[str, Any], dict[str, Any]] | None = None
    order = 0
    stack = [(reddit_get_post_comment_tree(page), None)]
    while stack:
        node, parent = stack.pop(0)
        if not node:
            continue
        if parent is not None and node.get("username") == username:
            order += 1
            if best is None or (node["time"], order) >= best[:2]:
                best = (node["time"], order, node, parent)
        stack[:0] = [(child, node) for child in node.get("children", [])]
    return None if best is None else (best[2], best[3])


def _comment_record(node: dict[str, Any]) -> dict[str, Any]:
    return {key: node.get(key) for key in ("username", "net_score", "content", "time")}


def reddit_get_latest_comment_obj_by_username(page: Any, username: str) -> dict[str, Any]:
    found = _latest_by(page, username)
    return _comment_record(found[0]) if found else {}


def reddit_get_latest_comment_content_by_username(page: Any, username: str) -> str:
    return str(reddit_get_latest_comment_obj_by_username(page, username).get("content", ""))


def reddit_get_parent_comment_obj_of_latest_comment_by_username(page: Any, username: str) -> dict[str, Any]:
    found = _latest_by(page, username)
    return _comment_record(found[1]) if found else {}


def reddit_get_parent_comment_username_of_latest_comment_by_username(page: Any, username: str) -> str:
    return str(reddit_get_parent_comment_obj_of_latest_comment_by_username(page, username).get("username", ""))


PAGE_HELPERS: dict[str, Callable[..., Any]] = {
    "get_query_text_lowercase": get_query_text_lowercase,
    "shopping_get_order_product_name_list": shopping_get_order_product_name_list,
    "shopping_get_order_product_quantity": shopping_get_order_product_quantity,
    "shopping_get_order_product_option": shopping_get_order_product_option,
    "shopping_get_product_attributes": shopping_get_product_attributes,
    "shopping_get_product_price": shopping_get_product_price,
    "shopping_get_num_reviews": shopping_get_num_reviews,
    "shopping_get_rating_as_percentage": shopping_get_rating_as_percentage,
    "reddit_get_post_comment_tree": reddit_get_post_comment_tree,
    "reddit_get_latest_comment_obj_by_username": reddit_get_latest_comment_obj_by_username,
    "reddit_get_latest_comment_content_by_username": reddit_get_latest_comment_content_by_username,
    "reddit_get_parent_comment_obj_of_latest_comment_by_username": (
        reddit_get_parent_comment_obj_of_latest_comment_by_username
    ),
    "reddit_get_parent_comment_username_of_latest_comment_by_username": (
        reddit_get_parent_comment_username_of_latest_comment_by_username
    ),
}
_OFFICIAL_EMPTY = ("reddit_get_latest_comment", "reddit_get_parent_comment")  # VWA bug 14 in official mode


def site_helpers(
    page: Any, site_urls: dict[str, str], mode: str = "fixed", shopping_admin: tuple[str, str] = SHOPPING_ADMIN
) -> dict[str, Callable[..., Any]]:
    """Every site helper for grading one task: page helpers, and REST helpers when the task has a Shopping URL."""
    helpers = dict(PAGE_HELPERS)
    if mode == "official":
        for name in helpers:
            if name.startswith(_OFFICIAL_EMPTY):
                helpers[name] = lambda *args, _name=name: {} if "_obj_" in _name else ""
    shopping = site_urls.get("__SHOPPING__")
    if shopping:
        helpers |= shopping_rest_helpers(MagentoApi(page.context.request, shopping, shopping_admin))
    return helpers
