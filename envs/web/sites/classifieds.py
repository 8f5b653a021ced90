"""The bundled Classifieds site (in the spirit of VWA's OSClass): listings with images, search with
filters and sorting, item pages with comments, login, posting and editing one's own listings.

URLs mimic OSClass: `/index.php?page=search&sPattern=...`, `/index.php?page=item&id=N`.
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
    do_login,
    do_logout,
    hash_password,
    not_found,
    redirect,
    show_login,
)

SCHEMA = """
CREATE TABLE users (username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, display_name TEXT NOT NULL);
CREATE TABLE items (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, category TEXT NOT NULL, kind TEXT NOT NULL,
    colour TEXT NOT NULL, extras TEXT NOT NULL, price REAL NOT NULL, city TEXT NOT NULL,
    description TEXT NOT NULL, image TEXT NOT NULL, seller TEXT NOT NULL, posted TEXT NOT NULL
);
CREATE TABLE comments (
    id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL, author TEXT NOT NULL, body TEXT NOT NULL, posted TEXT NOT NULL
);
"""

ITEM_COUNT = 150
PAGE_SIZE = 20
CATEGORIES = {"Bicycles": ["bicycle"], "Cars": ["car"], "Furniture": ["chair", "sofa"], "Boats": ["kayak"]}
CATEGORIES |= {"Home": ["lamp"], "Music": ["guitar"]}
KIND_PRICES = {"bicycle": (60, 900), "car": (3000, 30000), "chair": (15, 300), "sofa": (100, 1500)}
KIND_PRICES |= {"kayak": (150, 1200), "lamp": (10, 150), "guitar": (80, 1500)}
KIND_EXTRAS = {"bicycle": "basket", "car": "roof box", "chair": "cushion", "sofa": "cushion", "kayak": "paddle"}
ITEM_COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
CITIES = ["Pittsburgh", "Philadelphia", "Harrisburg", "Erie", "Allentown", "Scranton"]
CONDITIONS = ["Like new", "Gently used", "Well used", "Brand new, never used", "Some scratches"]
SELLERS = ["maria", "tom", "alex", "priya", "jordan", TEST_USERNAME]
OWN_ITEM_EVERY = 25  # every 25th item belongs to the test user, so "my listings" tasks exist


def item_kind(rng: random.Random) -> tuple[str, str]:
    category = rng.choice(list(CATEGORIES))
    return category, rng.choice(CATEGORIES[category])


def seed(conn: sqlite3.Connection) -> None:
    """Deterministic users, 150 items and a few comments (fixed RNG seed)."""
    rng = random.Random(20240501)
    for name in SELLERS:
        conn.execute("INSERT INTO users VALUES (?, ?, ?)", (name, hash_password(TEST_PASSWORD), name.title()))
    for item_id in range(1, ITEM_COUNT + 1):
        category, kind = item_kind(rng)
        colour = rng.choice(ITEM_COLOURS)
        low, high = KIND_PRICES[kind]
        price = float(rng.randrange(low, high))
        extras = KIND_EXTRAS[kind] if kind in KIND_EXTRAS and rng.random() < 0.3 else ""
        city = rng.choice(CITIES)
        seller = TEST_USERNAME if item_id % OWN_ITEM_EVERY == 0 else rng.choice(SELLERS[:-1])
        title = f"{colour.title()} {kind}"
        description = f"{rng.choice(CONDITIONS)} {colour} {kind} for sale in {city}. Asking ${price:.0f}. Pick up only."
        posted = f"2024-{6 - (ITEM_COUNT - item_id) // 28:02d}-{28 - (ITEM_COUNT - item_id) % 28:02d}"
        conn.execute(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                item_id,
                title,
                category,
                kind,
                colour,
                extras,
                price,
                city,
                description,
                f"item_{item_id}.png",
                seller,
                posted,
            ),
        )
    for comment_id in range(1, 41):
        item_id = rng.randrange(1, ITEM_COUNT + 1)
        body = rng.choice(["Is this still available?", "Would you take less?", "Great condition!", "Can you ship?"])
        conn.execute(
            "INSERT INTO comments VALUES (?, ?, ?, ?, ?)", (comment_id, item_id, rng.choice(SELLERS[:-1]), body, "2024")
        )


def write_images(directory: Path) -> None:
    """Draw every seeded item's image, and one per colour and kind for new listings."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    seed(conn)
    for item_id, kind, colour, extras in conn.execute("SELECT id, kind, colour, extras FROM items"):
        images.write_object_image(directory / f"item_{item_id}.png", kind, colour, [extras] if extras else [])
    for kinds in CATEGORIES.values():
        for kind in kinds:
            for colour in ITEM_COLOURS:
                images.write_object_image(directory / f"new_{kind}_{colour}.png", kind, colour, [])


def _categories(db: sqlite3.Connection) -> list[sqlite3.Row]:
    return db.execute("SELECT category, COUNT(*) AS count FROM items GROUP BY category ORDER BY category").fetchall()


def _home(app: SiteApp, request: Request) -> Response:
    latest = request.db.execute("SELECT * FROM items ORDER BY posted DESC, id DESC LIMIT 12").fetchall()
    return app.render("home.html", request, items=latest, categories=_categories(request.db))


SORT_ORDERS = {
    "newest": "posted DESC, id DESC",
    "price_asc": "price ASC, id ASC",
    "price_desc": "price DESC, id ASC",
}


def _search(app: SiteApp, request: Request) -> Response:
    query = request.query
    clauses, values = [], []
    if query.get("sPattern"):
        clauses.append("(title LIKE ? OR description LIKE ?)")
        values += [f"%{query['sPattern']}%"] * 2
    for field, column in [("sCategory", "category"), ("sColor", "colour"), ("sCity", "city")]:
        if query.get(field):
            clauses.append(f"{column} = ? COLLATE NOCASE")
            values.append(query[field])
    for field, op in [("sPriceMin", ">="), ("sPriceMax", "<=")]:
        if query.get(field, "").replace(".", "", 1).isdigit():
            clauses.append(f"price {op} ?")
            values.append(float(query[field]))
    order = SORT_ORDERS.get(query.get("sOrder", "newest"), SORT_ORDERS["newest"])
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    total = request.db.execute(f"SELECT COUNT(*) FROM items {where}", values).fetchone()[0]
    page = max(1, int(query["iPage"])) if query.get("iPage", "").isdigit() else 1
    rows = request.db.execute(
        f"SELECT * FROM items {where} ORDER BY {order} LIMIT ? OFFSET ?", [*values, PAGE_SIZE, (page - 1) * PAGE_SIZE]
    ).fetchall()
    return app.render(
        "search.html",
        request,
        items=rows,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        categories=_categories(request.db),
        colours=ITEM_COLOURS,
        cities=CITIES,
        orders=list(SORT_ORDERS),
    )


def _item(app: SiteApp, request: Request) -> Response:
    item_id = request.query.get("id", "")
    item = request.db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone() if item_id.isdigit() else None
    if item is None:
        return not_found(f"No listing with id {item_id!r}")
    if request.method == "POST":
        if (needed := app.require_login(request)) is not None:
            return needed
        body = request.form.get("body", "").strip()
        if body:
            request.db.execute(
                "INSERT INTO comments (item_id, author, body, posted) VALUES (?, ?, ?, '2024-07-01')",
                (item["id"], request.user, body),
            )
        return redirect(f"/index.php?page=item&id={item['id']}")
    comments = request.db.execute("SELECT * FROM comments WHERE item_id = ? ORDER BY id", (item["id"],)).fetchall()
    return app.render("item.html", request, item=item, comments=comments)


def _item_form(app: SiteApp, request: Request) -> Response:
    """Post a new listing (page=item_add) or edit one's own (page=item_edit&id=N)."""
    if (needed := app.require_login(request)) is not None:
        return needed
    item = None
    if request.query.get("page") == "item_edit":
        item = request.db.execute(
            "SELECT * FROM items WHERE id = ? AND seller = ?", (request.query.get("id", ""), request.user)
        ).fetchone()
        if item is None:
            return not_found("No listing of yours with that id")
    kinds = [kind for kinds in CATEGORIES.values() for kind in kinds]
    if request.method == "GET":
        return app.render("item_form.html", request, item=item, kinds=kinds, colours=ITEM_COLOURS, cities=CITIES)
    form = request.form
    try:
        price = float(form.get("price", "").replace(",", "").lstrip("$"))
    except ValueError:
        price = -1.0
    if not form.get("title", "").strip() or price < 0:
        return app.render(
            "item_form.html", request, item=item, kinds=kinds, colours=ITEM_COLOURS, cities=CITIES, error=True
        )
    if item is not None:
        request.db.execute(
            "UPDATE items SET title = ?, price = ?, description = ? WHERE id = ?",
            (form["title"].strip(), price, form.get("description", ""), item["id"]),
        )
        return redirect(f"/index.php?page=item&id={item['id']}")
    kind = form.get("kind") if form.get("kind") in kinds else "chair"
    colour = form.get("colour") if form.get("colour") in ITEM_COLOURS else "black"
    category = next(name for name, names in CATEGORIES.items() if kind in names)
    city = form.get("city") if form.get("city") in CITIES else CITIES[0]
    cursor = request.db.execute(
        "INSERT INTO items (title, category, kind, colour, extras, price, city, description, image, seller, posted)"
        " VALUES (?, ?, ?, ?, '', ?, ?, ?, ?, ?, '2024-07-01')",
        (
            form["title"].strip(),
            category,
            kind,
            colour,
            price,
            city,
            form.get("description", ""),
            f"new_{kind}_{colour}.png",
            request.user,
        ),
    )
    return redirect(f"/index.php?page=item&id={cursor.lastrowid}")


def _my_items(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    rows = request.db.execute("SELECT * FROM items WHERE seller = ? ORDER BY id", (request.user,)).fetchall()
    return app.render("my_items.html", request, items=rows)


def _dispatch(app: SiteApp, request: Request) -> Response:
    """OSClass-style routing on the `page` query parameter of /index.php."""
    page = request.query.get("page", "")
    handlers = {
        "": _home,
        "search": _search,
        "item": _item,
        "item_add": _item_form,
        "item_edit": _item_form,
        "user": _my_items,
        "login": do_login if request.method == "POST" else show_login,
        "logout": do_logout,
    }
    handler = handlers.get(page)
    return handler(app, request) if handler else not_found(f"No page {page!r}")


def routes(router: Router) -> None:
    for method in ("GET", "POST"):
        router.add(method, "/", _dispatch)
        router.add(method, "/index.php", _dispatch)


DEFINITION = SiteDefinition("classifieds", SCHEMA, seed, write_images, routes)
