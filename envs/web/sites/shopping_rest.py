"""The part of Magento's REST API that VisualWebArena's graders call, on the bundled Shopping site.

- ``POST /rest/default/V1/integration/admin/token`` with ``{"username", "password"}`` -> a bearer token
  (the admin account of VWA's configuration: admin / admin1234);
- ``GET /rest/V1/orders`` with ``searchCriteria[sortOrders][0][field|direction]`` and
  ``searchCriteria[pageSize]`` -> ``{"items": [...], "total_count"}``, ``increment_id`` as Magento writes it;
- ``GET /rest/V1/products/<sku>/reviews`` -> the product's reviews, oldest first, each with ``nickname``,
  ``title``, ``detail`` and ``ratings[0]`` (``rating_name`` "Rating", ``percent``, ``value``);
- ``GET /rest/V1/products/<sku>`` -> ``sku``, ``name``, ``price`` and ``custom_attributes``.
Every call but the token one needs ``Authorization: Bearer <token>``; errors come back as Magento does,
``{"message": ...}`` with status 401 or 404.
"""

from __future__ import annotations

import secrets
from typing import Any

from envs.web.sites.server import Request, Response, Router, SiteApp, json_response

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin1234"
_ORDER_FIELDS = {"created_at": "o.placed", "entity_id": "o.id", "increment_id": "o.id", "grand_total": "o.total"}


def _unauthorised() -> Response:
    return json_response({"message": "The consumer isn't authorized to access %resources."}, "401 Unauthorized")


def _authorised(app: SiteApp, request: Request) -> bool:
    header = request.headers.get("authorization", "")
    return header.startswith("Bearer ") and header.removeprefix("Bearer ").strip() in app.api_tokens


def _admin_token(app: SiteApp, request: Request) -> Response:
    credentials = request.json() or {}
    if credentials.get("username") != ADMIN_USERNAME or credentials.get("password") != ADMIN_PASSWORD:
        return json_response(
            {"message": "The account sign-in was incorrect or your account is disabled temporarily."},
            "401 Unauthorized",
        )
    token = secrets.token_hex(16)
    app.api_tokens.add(token)
    return json_response(token)


def _orders(app: SiteApp, request: Request) -> Response:
    if not _authorised(app, request):
        return _unauthorised()
    query = request.query
    field = query.get("searchCriteria[sortOrders][0][field]", "entity_id")
    direction = "DESC" if query.get("searchCriteria[sortOrders][0][direction]", "ASC").upper() == "DESC" else "ASC"
    column = _ORDER_FIELDS.get(field, "o.id")
    size = int(query["searchCriteria[pageSize]"]) if query.get("searchCriteria[pageSize]", "").isdigit() else 20
    total = request.db.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
    rows = request.db.execute(
        f"SELECT o.* FROM orders o ORDER BY {column} {direction}, o.id {direction} LIMIT ?", (size,)
    ).fetchall()
    items = []
    for order in rows:
        lines = request.db.execute("SELECT * FROM order_items WHERE order_id = ?", (order["id"],)).fetchall()
        items.append(
            {
                "entity_id": order["id"],
                "increment_id": f"{order['id']:09d}",
                "created_at": f"{order['placed']} 00:00:00" if len(order["placed"]) == 10 else order["placed"],
                "customer_firstname": order["username"],
                "grand_total": order["total"],
                "status": order["status"].lower(),
                "items": [
                    {"sku": line["sku"], "name": line["name"], "qty_ordered": line["quantity"], "price": line["price"]}
                    for line in lines
                ],
            }
        )
    return json_response({"items": items, "search_criteria": {"page_size": size}, "total_count": total})


def _product(request: Request) -> Any:
    return request.db.execute("SELECT * FROM products WHERE sku = ?", (request.params["sku"],)).fetchone()


def _product_reviews(app: SiteApp, request: Request) -> Response:
    if not _authorised(app, request):
        return _unauthorised()
    product = _product(request)
    if product is None:
        return json_response({"message": "The product that was requested doesn't exist."}, "404 Not Found")
    reviews = request.db.execute("SELECT * FROM reviews WHERE product_id = ? ORDER BY id", (product["id"],))
    return json_response(
        [
            {
                "id": review["id"],
                "title": review["title"],
                "detail": review["body"],
                "nickname": review["author"],
                "ratings": [
                    {"rating_name": "Rating", "percent": 20 * review["rating"], "value": review["rating"]},
                ],
                "review_entity": "product",
                "review_status": 1,
                "entity_pk_value": product["id"],
            }
            for review in reviews
        ]
    )


def _product_detail(app: SiteApp, request: Request) -> Response:
    if not _authorised(app, request):
        return _unauthorised()
    product = _product(request)
    if product is None:
        return json_response({"message": "The product that was requested doesn't exist."}, "404 Not Found")
    attributes = {"description": product["description"], "color": product["colour"], "url_key": product["sku"].lower()}
    return json_response(
        {
            "id": product["id"],
            "sku": product["sku"],
            "name": product["name"],
            "price": product["price"],
            "status": 1,
            "custom_attributes": [{"attribute_code": code, "value": value} for code, value in attributes.items()],
        }
    )


def rest_routes(router: Router) -> None:
    for prefix in ("/rest/V1", "/rest/default/V1"):
        router.add("POST", f"{prefix}/integration/admin/token", _admin_token)
        router.add("GET", f"{prefix}/orders", _orders)
        router.add("GET", prefix + "/products/{sku}/reviews", _product_reviews)
        router.add("GET", prefix + "/products/{sku}", _product_detail)
