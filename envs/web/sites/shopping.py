"""The bundled Shopping site (in the spirit of VWA's Magento store): a catalogue with images, search with
category / colour / price filters and sorting, product pages with reviews, cart, checkout, orders, wish list.

URLs mimic Magento: `/catalogsearch/result/?q=...`, `/checkout/cart/`, `/sales/order/view/order_id/N/`.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from envs.web.sites import images
from envs.web.sites.server import (
    TEST_PASSWORD,
    TEST_USERNAME,
    Request,
    Response,
    Router,
    SiteApp,
    SiteDefinition,
    add_login_routes,
    hash_password,
    not_found,
    redirect,
)
from envs.web.sites.shopping_rest import rest_routes

SCHEMA = """
CREATE TABLE users (username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, display_name TEXT NOT NULL);
CREATE TABLE products (
    id INTEGER PRIMARY KEY, sku TEXT UNIQUE NOT NULL, name TEXT NOT NULL, category TEXT NOT NULL,
    kind TEXT NOT NULL, colour TEXT NOT NULL, extras TEXT NOT NULL, price REAL NOT NULL,
    description TEXT NOT NULL, image TEXT NOT NULL
);
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY, product_id INTEGER NOT NULL, author TEXT NOT NULL, rating INTEGER NOT NULL,
    title TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE cart_items (username TEXT NOT NULL, product_id INTEGER NOT NULL, quantity INTEGER NOT NULL,
    PRIMARY KEY (username, product_id));
CREATE TABLE wishlist (username TEXT NOT NULL, product_id INTEGER NOT NULL, PRIMARY KEY (username, product_id));
CREATE TABLE orders (id INTEGER PRIMARY KEY, username TEXT NOT NULL, placed TEXT NOT NULL, total REAL NOT NULL,
    status TEXT NOT NULL);
CREATE TABLE order_items (order_id INTEGER NOT NULL, product_id INTEGER NOT NULL, sku TEXT NOT NULL,
    name TEXT NOT NULL, quantity INTEGER NOT NULL, price REAL NOT NULL);
"""

PRODUCT_COUNT = 100
CATEGORIES = {"Clothing": ["t-shirt"], "Kitchen": ["mug"], "Bags": ["backpack"], "Shoes": ["sneaker"]}
CATEGORIES |= {"Electronics": ["headphones"], "Home": ["blanket", "lamp"]}
KIND_PRICES = {"t-shirt": (8, 40), "mug": (5, 25), "backpack": (20, 120), "sneaker": (30, 160)}
KIND_PRICES |= {"headphones": (15, 300), "blanket": (15, 90), "lamp": (12, 110)}
KIND_NAMES = {"t-shirt": "Cotton T-Shirt", "mug": "Ceramic Mug", "backpack": "Daypack Backpack"}
KIND_NAMES |= {"sneaker": "Running Sneaker", "headphones": "Wireless Headphones", "blanket": "Fleece Blanket"}
KIND_NAMES |= {"lamp": "Desk Lamp"}
PRODUCT_COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink", "grey"]
BRANDS = ["Norda", "Kestrel", "Alba", "Mosso", "Tidewell", "Brio"]
REVIEWERS = ["sam", "lee", "kim", "dana", "rui", "ola"]
REVIEW_TEXTS = {
    1: ("Disappointed", "Broke after a week."),
    2: ("Not great", "Smaller than expected."),
    3: ("Okay", "Does the job."),
    4: ("Good value", "Works well for the price."),
    5: ("Love it", "Excellent quality, would buy again."),
}
SORT_ORDERS = {"relevance": "p.id ASC", "price_asc": "p.price ASC, p.id ASC", "price_desc": "p.price DESC, p.id ASC"}
SORT_ORDERS |= {"rating": "rating DESC, p.id ASC", "name": "p.name ASC"}


def seed(conn: sqlite3.Connection) -> None:
    """Deterministic users, 100 products with 0-5 reviews each and two past orders of the test user."""
    rng = random.Random(20240502)
    for name in [TEST_USERNAME, *REVIEWERS]:
        conn.execute("INSERT INTO users VALUES (?, ?, ?)", (name, hash_password(TEST_PASSWORD), name.title()))
    review_id = 0
    for product_id in range(1, PRODUCT_COUNT + 1):
        category = rng.choice(list(CATEGORIES))
        kind = rng.choice(CATEGORIES[category])
        colour = rng.choice(PRODUCT_COLOURS)
        extras = (
            "stripes" if kind in {"t-shirt", "mug", "backpack", "sneaker", "blanket"} and rng.random() < 0.3 else ""
        )
        low, high = KIND_PRICES[kind]
        price = rng.randrange(low, high) + 0.99
        name = f"{rng.choice(BRANDS)} {KIND_NAMES[kind]} - {colour.title()}"
        description = f"A {colour} {kind} from our {category.lower()} range. Model {1000 + product_id}."
        conn.execute(
            "INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                product_id,
                f"B0{7000 + product_id}",
                name,
                category,
                kind,
                colour,
                extras,
                price,
                description,
                f"product_{product_id}.png",
            ),
        )
        for author in rng.sample(REVIEWERS, rng.randrange(0, 6)):
            review_id += 1
            rating = rng.randint(1, 5)
            title, body = REVIEW_TEXTS[rating]
            conn.execute(
                "INSERT INTO reviews VALUES (?, ?, ?, ?, ?, ?)", (review_id, product_id, author, rating, title, body)
            )
    for order_id, product_ids in [(1, [3, 17]), (2, [42])]:
        total = 0.0
        for product_id in product_ids:
            sku, name, price = conn.execute(
                "SELECT sku, name, price FROM products WHERE id = ?", (product_id,)
            ).fetchone()
            conn.execute("INSERT INTO order_items VALUES (?, ?, ?, ?, 1, ?)", (order_id, product_id, sku, name, price))
            total += price
        conn.execute(
            "INSERT INTO orders VALUES (?, ?, ?, ?, 'Complete')",
            (order_id, TEST_USERNAME, f"2024-0{order_id}-15", total),
        )


def write_images(directory: Path) -> None:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    seed(conn)
    for product_id, kind, colour, extras in conn.execute("SELECT id, kind, colour, extras FROM products"):
        images.write_object_image(directory / f"product_{product_id}.png", kind, colour, [extras] if extras else [])


PRODUCT_SELECT = (
    "SELECT p.*, COALESCE(AVG(r.rating), 0) AS rating, COUNT(r.id) AS review_count "
    "FROM products p LEFT JOIN reviews r ON r.product_id = p.id"
)


def _categories(db: sqlite3.Connection) -> list[str]:
    return [row[0] for row in db.execute("SELECT DISTINCT category FROM products ORDER BY category")]


def _cart_count(request: Request) -> int:
    if request.user is None:
        return 0
    row = request.db.execute("SELECT SUM(quantity) FROM cart_items WHERE username = ?", (request.user,)).fetchone()
    return row[0] or 0


def _base_context(request: Request) -> dict[str, object]:
    return {"categories": _categories(request.db), "cart_count": _cart_count(request)}


def _render(app: SiteApp, request: Request, template: str, **context: object) -> Response:
    return app.render(template, request, **context)


def _home(app: SiteApp, request: Request) -> Response:
    featured = request.db.execute(f"{PRODUCT_SELECT} GROUP BY p.id ORDER BY p.id LIMIT 12").fetchall()
    return _render(app, request, "home.html", products=featured)


def _listing(app: SiteApp, request: Request, category: str | None = None) -> Response:
    query = request.query
    clauses, values = [], []
    if query.get("q"):
        clauses.append("(p.name LIKE ? OR p.description LIKE ?)")
        values += [f"%{query['q']}%"] * 2
    category = category or query.get("cat")
    if category:
        clauses.append("p.category = ? COLLATE NOCASE")
        values.append(category)
    if query.get("colour"):
        clauses.append("p.colour = ?")
        values.append(query["colour"])
    for field, op in [("price_min", ">="), ("price_max", "<=")]:
        if query.get(field, "").replace(".", "", 1).isdigit():
            clauses.append(f"p.price {op} ?")
            values.append(float(query[field]))
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    order = SORT_ORDERS.get(query.get("product_list_order", "relevance"), SORT_ORDERS["relevance"])
    rows = request.db.execute(f"{PRODUCT_SELECT} {where} GROUP BY p.id ORDER BY {order}", values).fetchall()
    return _render(
        app, request, "listing.html", products=rows, category=category, colours=PRODUCT_COLOURS, orders=SORT_ORDERS
    )


def _category(app: SiteApp, request: Request) -> Response:
    slug = str(request.params["slug"])
    match = next((name for name in _categories(request.db) if name.lower() == slug.lower()), None)
    return _listing(app, request, match) if match else not_found(f"No category {slug!r}")


def _product_row(request: Request) -> sqlite3.Row | None:
    return request.db.execute(f"{PRODUCT_SELECT} WHERE p.sku = ? GROUP BY p.id", (request.params["sku"],)).fetchone()


def _product(app: SiteApp, request: Request) -> Response:
    product = _product_row(request)
    if product is None:
        return not_found("No such product")
    reviews = request.db.execute("SELECT * FROM reviews WHERE product_id = ? ORDER BY id", (product["id"],)).fetchall()
    return _render(app, request, "product.html", product=product, reviews=reviews, message=request.query.get("msg"))


def _add_review(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    product = _product_row(request)
    if product is None:
        return not_found("No such product")
    rating = int(request.form["rating"]) if request.form.get("rating", "") in {"1", "2", "3", "4", "5"} else 5
    request.db.execute(
        "INSERT INTO reviews (product_id, author, rating, title, body) VALUES (?, ?, ?, ?, ?)",
        (product["id"], request.user, rating, request.form.get("title", ""), request.form.get("body", "")),
    )
    return redirect(f"/product/{product['sku']}?msg=review")


def _add_to_cart(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    product = _product_row(request)
    if product is None:
        return not_found("No such product")
    quantity = int(request.form["qty"]) if request.form.get("qty", "").isdigit() else 1
    request.db.execute(
        "INSERT INTO cart_items VALUES (?, ?, ?) ON CONFLICT(username, product_id) "
        "DO UPDATE SET quantity = quantity + excluded.quantity",
        (request.user, product["id"], max(1, quantity)),
    )
    return redirect(f"/product/{product['sku']}?msg=cart")


def _add_to_wishlist(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    product = _product_row(request)
    if product is None:
        return not_found("No such product")
    request.db.execute("INSERT OR IGNORE INTO wishlist VALUES (?, ?)", (request.user, product["id"]))
    return redirect("/wishlist/")


def _cart_rows(request: Request) -> list[sqlite3.Row]:
    return request.db.execute(
        "SELECT p.*, c.quantity FROM cart_items c JOIN products p ON p.id = c.product_id WHERE c.username = ? "
        "ORDER BY p.id",
        (request.user,),
    ).fetchall()


def _cart(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    rows = _cart_rows(request)
    total = sum(row["price"] * row["quantity"] for row in rows)
    return _render(app, request, "cart.html", items=rows, total=total)


def _remove_from_cart(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    request.db.execute(
        "DELETE FROM cart_items WHERE username = ? AND product_id = (SELECT id FROM products WHERE sku = ?)",
        (request.user, request.params["sku"]),
    )
    return redirect("/checkout/cart/")


def _place_order(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    rows = _cart_rows(request)
    if not rows:
        return redirect("/checkout/cart/")
    total = sum(row["price"] * row["quantity"] for row in rows)
    cursor = request.db.execute(
        "INSERT INTO orders (username, placed, total, status) VALUES (?, '2024-07-01', ?, 'Pending')",
        (request.user, total),
    )
    for row in rows:
        request.db.execute(
            "INSERT INTO order_items VALUES (?, ?, ?, ?, ?, ?)",
            (cursor.lastrowid, row["id"], row["sku"], row["name"], row["quantity"], row["price"]),
        )
    request.db.execute("DELETE FROM cart_items WHERE username = ?", (request.user,))
    return redirect(f"/sales/order/view/order_id/{cursor.lastrowid}/")


def _order_history(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    orders = request.db.execute("SELECT * FROM orders WHERE username = ? ORDER BY id DESC", (request.user,)).fetchall()
    return _render(app, request, "orders.html", orders=orders)


def _order(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    order = request.db.execute(
        "SELECT * FROM orders WHERE id = ? AND username = ?", (request.params["order_id"], request.user)
    ).fetchone()
    if order is None:
        return not_found("No such order")
    items = request.db.execute(
        "SELECT i.*, p.colour FROM order_items i JOIN products p ON p.id = i.product_id WHERE i.order_id = ?",
        (order["id"],),
    ).fetchall()
    return _render(app, request, "order.html", order=order, items=items)


def _wishlist(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    rows = request.db.execute(
        "SELECT p.* FROM wishlist w JOIN products p ON p.id = w.product_id WHERE w.username = ? ORDER BY p.id",
        (request.user,),
    ).fetchall()
    return _render(app, request, "wishlist.html", products=rows)


def routes(router: Router) -> None:
    rest_routes(router)
    router.add("GET", "/", _home)
    router.add("GET", "/catalogsearch/result", _listing)
    router.add("GET", "/category/{slug}", _category)
    router.add("GET", "/product/{sku}", _product)
    router.add("POST", "/product/{sku}/review", _add_review)
    router.add("POST", "/checkout/cart/add/{sku}", _add_to_cart)
    router.add("POST", "/checkout/cart/remove/{sku}", _remove_from_cart)
    router.add("GET", "/checkout/cart", _cart)
    router.add("POST", "/checkout/placeorder", _place_order)
    router.add("GET", "/sales/order/history", _order_history)
    router.add("GET", "/sales/order/view/order_id/{order_id:int}", _order)
    router.add("GET", "/wishlist", _wishlist)
    router.add("POST", "/wishlist/add/{sku}", _add_to_wishlist)
    add_login_routes(router, "/customer/account/login", "/customer/account/logout")


DEFINITION = SiteDefinition("shopping", SCHEMA, seed, write_images, routes, _base_context)
