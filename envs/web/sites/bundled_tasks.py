"""Builds the bundled task suite (`envs/web/tasks/bundled/*.json`, VWA format plus an `oracle` trajectory)
from the sites' deterministic seed data: `python -m envs.web.sites.bundled_tasks` rewrites the files.

Oracle steps: {"action": "click"|"type"|"hover"|"press"|"scroll"|"goto"|"go_back"|"stop", "selector": CSS,
"text": str, "press_enter": bool, "url": str with site placeholders, "answer": str}.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from envs.web.sites import classifieds, reddit, shopping

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks" / "bundled"
IMAGES_DIR = TASKS_DIR / "images"
C, S, R = "__CLASSIFIEDS__", "__SHOPPING__", "__REDDIT__"


def _seeded(module: Any) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    conn.executescript(module.SCHEMA)
    module.seed(conn)
    return conn


def _task(
    site: str,
    intent: str,
    start_url: str,
    evaluation: dict[str, Any],
    oracle: list[dict[str, Any]],
    *,
    login: bool = False,
    reset: bool = False,
    image: str | None = None,
) -> dict[str, Any]:
    full_eval = {"eval_types": [], "reference_answers": None, "reference_url": "", "program_html": []}
    full_eval |= evaluation
    return {
        "sites": [site],
        "task_id": -1,
        "require_login": login,
        "storage_state": f"./.auth/{site}_state.json" if login else None,
        "start_url": start_url,
        "geolocation": None,
        "intent_template": intent,
        "intent": intent,
        "image": image,
        "instantiation_dict": {},
        "require_reset": reset,
        "eval": full_eval,
        "oracle": oracle,
    }


def _answer(text: str, **references: Any) -> dict[str, Any]:
    """A string_match evaluation; `text` is the oracle's answer, kept next to its references for reading."""
    return {"eval_types": ["string_match"], "reference_answers": references}


def _url(reference: str, note: str = "EXACT") -> dict[str, Any]:
    return {"eval_types": ["url_match"], "reference_url": reference, "url_note": note}


def _html(*targets: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    programs = [{"url": url, "locator": loc, "required_contents": req} for url, loc, req in targets]
    return {"eval_types": ["program_html"], "program_html": programs}


def _goto(url: str) -> dict[str, Any]:
    return {"action": "goto", "url": url}


def _click(selector: str) -> dict[str, Any]:
    return {"action": "click", "selector": selector}


def _type(selector: str, text: str, press_enter: bool = False) -> dict[str, Any]:
    return {"action": "type", "selector": selector, "text": text, "press_enter": press_enter}


def _stop(answer: str = "") -> dict[str, Any]:
    return {"action": "stop", "answer": answer}


def _copy_query_image(site_images: Path, name: str, target: str) -> str:
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    (IMAGES_DIR / target).write_bytes((site_images / name).read_bytes())
    return f"envs/web/tasks/bundled/images/{target}"


def classifieds_tasks(site_images: Path) -> list[dict[str, Any]]:
    db = _seeded(classifieds)
    tasks = []
    item_url = f"{C}/index.php?page=item&id="
    combos = [
        db.execute(
            "SELECT colour, kind, category FROM items WHERE kind = ? GROUP BY colour ORDER BY COUNT(*) DESC, colour",
            (kind,),
        ).fetchone()
        for kind in ("bicycle", "kayak", "car", "guitar")
    ]
    for colour, kind, category in combos:
        rows = db.execute(
            "SELECT * FROM items WHERE colour = ? AND kind = ? ORDER BY price, id", (colour, kind)
        ).fetchall()
        cheapest = rows[0]
        search = f"{C}/index.php?page=search&sCategory={category}&sColor={colour}&sOrder=price_asc"
        price = f"{cheapest['price']:.0f}"
        tasks.append(
            _task(
                "classifieds",
                f"What is the price in dollars of the cheapest {colour} {kind}? Answer with the number only.",
                C,
                _answer(price, exact_match=price),
                [_goto(search), _stop(price)],
            )
        )
        tasks.append(
            _task(
                "classifieds",
                f"Find me the cheapest {colour} {kind} on this site.",
                C,
                _url(item_url + str(cheapest["id"])),
                [_goto(search), _click(".results article:nth-of-type(1) a.listing-title"), _stop()],
            )
        )
        expensive = rows[-1]
        tasks.append(
            _task(
                "classifieds",
                f"In which city is the most expensive {colour} {kind} listed?",
                C,
                _answer(expensive["city"], must_include=[expensive["city"]]),
                [
                    _goto(search.replace("price_asc", "price_desc")),
                    _click(".results article:nth-of-type(1) a.listing-title"),
                    _stop(expensive["city"]),
                ],
            )
        )
    for category in ["Cars", "Home"]:
        count = db.execute("SELECT COUNT(*) FROM items WHERE category = ?", (category,)).fetchone()[0]
        tasks.append(
            _task(
                "classifieds",
                f"How many listings are in the {category} category?",
                C,
                _answer(str(count), one_of=[f"{count} listings", f"{count} items", f"{count} ads"]),
                [_click(f"a[href$='sCategory={category}']"), _stop(f"{count} listings")],
            )
        )
    kayaks = db.execute("SELECT * FROM items WHERE kind = 'kayak' ORDER BY price, id").fetchall()
    if kayaks[0]["colour"] != kayaks[-1]["colour"]:
        tasks.append(
            _task(
                "classifieds",
                "What colour is the cheapest kayak? Answer with one colour.",
                C,
                _answer(kayaks[0]["colour"], must_include=[kayaks[0]["colour"]], must_exclude=[kayaks[-1]["colour"]]),
                [_goto(f"{C}/index.php?page=search&sCategory=Boats&sOrder=price_asc"), _stop(kayaks[0]["colour"])],
            )
        )
    tasks.append(
        _task(
            "classifieds",
            "What is the price of the purple tuba listed on this site? Answer N/A if there is none.",
            C,
            _answer("N/A", fuzzy_match="N/A"),
            [_type("input[name='sPattern']", "tuba", press_enter=True), _stop("N/A")],
        )
    )
    for word in ["guitar", "sofa"]:
        tasks.append(
            _task(
                "classifieds",
                f"Search the site for {word} listings.",
                C,
                _url(f"{C}/index.php?page=search&sPattern={word}", "GOLD in PRED"),
                [_type("input[name='sPattern']", word, press_enter=True), _stop()],
            )
        )
    # Visual: the colour and kind are in the title, the extra is only in the picture.
    visual = db.execute(
        "SELECT colour, kind, extras, MIN(id) AS id FROM items WHERE extras != '' GROUP BY colour, kind, extras "
        "HAVING COUNT(*) = 1 AND "
        "(SELECT COUNT(*) FROM items i WHERE i.colour = items.colour AND i.kind = items.kind) > 1 "
        "ORDER BY id LIMIT 3"
    ).fetchall()
    for row in visual:
        search = f"{C}/index.php?page=search&sPattern={row['kind']}&sColor={row['colour']}"
        tasks.append(
            _task(
                "classifieds",
                f"Find the listing of the {row['colour']} {row['kind']} with a {row['extras']} in its photo.",
                C,
                _url(item_url + str(row["id"])),
                [_goto(search), _click(f"a.listing-title[href$='id={row['id']}']"), _stop()],
            )
        )
        vqa = [
            {"question": f"Is there a {row['extras']} in this image? (yes/no)", "answer": "yes"},
            {"question": f"Is this {row['kind']} {row['colour']}? (yes/no)", "answer": "yes"},
        ]
        tasks.append(
            _task(
                "classifieds",
                f"Navigate to a listing of a {row['colour']} {row['kind']} that has a {row['extras']}.",
                C,
                {
                    "eval_types": ["page_image_query"],
                    "page_image_query": [
                        {"eval_image_url": "last", "eval_image_class": ".item-photos", "eval_vqa": vqa}
                    ],
                },
                [_goto(search), _click(f"a.listing-title[href$='id={row['id']}']"), _stop()],
            )
        )
    for item_id in (visual[0]["id"], 77):
        query = _copy_query_image(site_images, f"item_{item_id}.png", f"classifieds_item_{item_id}.png")
        item = db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        tasks.append(
            _task(
                "classifieds",
                "Find the listing whose photo shows exactly this item and open it.",
                C,
                {
                    "eval_types": ["url_match", "page_image_query"],
                    "reference_url": item_url + str(item_id),
                    "url_note": "EXACT",
                    "page_image_query": [
                        {"eval_image_url": "last", "eval_image_class": ".item-photos", "eval_fuzzy_image_match": query}
                    ],
                },
                [
                    _goto(f"{C}/index.php?page=search&sPattern={item['kind']}&sColor={item['colour']}"),
                    _click(f"a.listing-title[href$='id={item_id}']"),
                    _stop(),
                ],
                image=query,
            )
        )
    # State changes (login): comment, edit own listing, publish a new listing.
    chair = db.execute("SELECT * FROM items WHERE kind = 'chair' ORDER BY price, id").fetchone()
    comment = "Is this still available? I can pick it up on Saturday."
    tasks.append(
        _task(
            "classifieds",
            f'Leave the comment "{comment}" on the cheapest chair.',
            C,
            _html(
                (
                    item_url + str(chair["id"]),
                    "document.querySelector('.comments').outerText",
                    {"must_include": [comment]},
                )
            ),
            [
                _goto(f"{C}/index.php?page=search&sPattern=chair&sOrder=price_asc"),
                _click(".results article:nth-of-type(1) a.listing-title"),
                _type("#comment-body", comment),
                _click("#post-comment"),
                _stop(),
            ],
            login=True,
            reset=True,
        )
    )
    own = db.execute("SELECT * FROM items WHERE seller = 'user' ORDER BY id").fetchall()
    for item, new_price in [(own[0], 99), (own[1], 1234)]:
        tasks.append(
            _task(
                "classifieds",
                f'Change the price of my listing "{item["title"]}" (id {item["id"]}) to ${new_price}.',
                C,
                _html(
                    (
                        item_url + str(item["id"]),
                        "func:get_query_text(__page__, '.price')",
                        {"must_include": [f"{new_price}.00"]},
                    )
                ),
                [
                    _click("a[href*='page=user']"),
                    _goto(f"{C}/index.php?page=item_edit&id={item['id']}"),
                    _type("#price", str(new_price)),
                    _click("#publish"),
                    _stop(),
                ],
                login=True,
                reset=True,
            )
        )
    title = "Vintage red road bicycle"
    tasks.append(
        _task(
            "classifieds",
            f'Publish a listing titled "{title}" for a red bicycle at $150 and stay on its page.',
            C,
            _html(
                (
                    "last",
                    "lambda:(() => { try { return document.querySelector('.item-title').textContent"
                    " } catch (e) { return '' } })()",
                    {"exact_match": title},
                ),
                ("last", "func:get_query_text(__page__, '.price')", {"must_include": ["150.00"]}),
            ),
            [
                _click("a[href*='page=item_add']"),
                _type("#title", title),
                _type("#price", "150"),
                _type("#description", "Light road bike, new tyres."),
                _click("#publish"),
                _stop(),
            ],
            login=True,
            reset=True,
        )
    )
    return tasks


def shopping_tasks(site_images: Path) -> list[dict[str, Any]]:
    db = _seeded(shopping)
    tasks = []
    select = shopping.PRODUCT_SELECT
    for kind, colour in [("mug", "red"), ("headphones", "black"), ("sneaker", "blue")]:
        rows = db.execute(f"{select} WHERE p.kind = ? GROUP BY p.id ORDER BY p.price, p.id", (kind,)).fetchall()
        cheapest = rows[0]
        search = f"{S}/catalogsearch/result/?q={shopping.KIND_NAMES[kind].split()[-1]}&product_list_order=price_asc"
        price = f"{cheapest['price']:.2f}"
        tasks.append(
            _task(
                "shopping",
                f"What is the price of the cheapest {kind} in the store? Answer like 12.34.",
                f"{S}/",
                _answer(price, exact_match=price),
                [_goto(search), _stop(price)],
            )
        )
        tasks.append(
            _task(
                "shopping",
                f"Open the product page of the cheapest {kind}.",
                f"{S}/",
                _url(f"{S}/product/{cheapest['sku']}"),
                [_goto(search), _click(".products-grid .product-item:nth-of-type(1) a.product-item-link"), _stop()],
            )
        )
        brand = rows[-1]["name"].split()[0]
        tasks.append(
            _task(
                "shopping",
                f"Which brand makes the most expensive {kind}?",
                f"{S}/",
                _answer(brand, must_include=[brand]),
                [_goto(search.replace("price_asc", "price_desc")), _stop(brand)],
            )
        )
        coloured = [row for row in rows if row["colour"] == colour]
        if coloured:
            sku = coloured[0]["sku"]
            tasks.append(
                _task(
                    "shopping",
                    f"What is the SKU of the cheapest {colour} {kind}?",
                    f"{S}/",
                    _answer(sku, must_include=[sku], must_exclude=[r["sku"] for r in rows if r["sku"] != sku][:3]),
                    [_goto(f"{search}&colour={colour}"), _stop(sku)],
                )
            )
    best = db.execute(f"{select} GROUP BY p.id HAVING review_count >= 3 ORDER BY rating DESC, p.id LIMIT 1").fetchone()
    tasks.append(
        _task(
            "shopping",
            f'How many reviews does "{best["name"]}" ({best["sku"]}) have?',
            f"{S}/",
            _answer(str(best["review_count"]), one_of=[f"{best['review_count']} reviews"]),
            [_goto(f"{S}/product/{best['sku']}"), _stop(f"{best['review_count']} reviews")],
        )
    )
    tasks.append(
        _task(
            "shopping",
            "How much does the store charge for a pogo stick? Answer N/A if it sells none.",
            f"{S}/",
            _answer("N/A", fuzzy_match="N/A"),
            [_type("#search", "pogo stick", press_enter=True), _stop("N/A")],
        )
    )
    for word in ["backpack", "lamp"]:
        tasks.append(
            _task(
                "shopping",
                f"Search the store for {word}.",
                f"{S}/",
                _url(f"{S}/catalogsearch/result/?q={word}", "GOLD in PRED"),
                [_type("#search", word, press_enter=True), _stop()],
            )
        )
    tasks.append(
        _task(
            "shopping",
            "Show me the Kitchen category sorted by price, lowest first.",
            f"{S}/",
            _url(f"{S}/category/kitchen?product_list_order=price_asc"),
            [
                _click("a.category-link[href='/category/kitchen']"),
                _goto(f"{S}/category/kitchen?product_list_order=price_asc"),
                _stop(),
            ],
        )
    )
    tasks.append(
        _task(
            "shopping",
            "What is the SKU of the product in my most recent order?",
            f"{S}/",
            _answer("B07042", must_include=["B07042"]),
            [_goto(f"{S}/sales/order/history/"), _click("a.action.view"), _stop("B07042")],
            login=True,
        )
    )
    # State changes: cart, order, review, wish list.
    cart_locator = "document.querySelector('.cart.items').outerText"
    for kind in ["mug", "backpack"]:
        product = db.execute(f"{select} WHERE p.kind = ? GROUP BY p.id ORDER BY p.price, p.id", (kind,)).fetchone()
        tasks.append(
            _task(
                "shopping",
                f"Add the cheapest {kind} to my cart.",
                f"{S}/",
                _html((f"{S}/checkout/cart/", cart_locator, {"must_include": [product["name"]]})),
                [
                    _goto(f"{S}/catalogsearch/result/?q={kind}&product_list_order=price_asc"),
                    _click(".products-grid .product-item:nth-of-type(1) a.product-item-link"),
                    _click("#product-addtocart-button"),
                    _stop(),
                ],
                login=True,
                reset=True,
            )
        )
    lamp = db.execute(f"{select} WHERE p.kind = 'lamp' GROUP BY p.id ORDER BY p.price DESC, p.id").fetchone()
    tasks.append(
        _task(
            "shopping",
            "Buy two of the most expensive desk lamp.",
            f"{S}/",
            _html(
                (
                    "last",
                    'document.querySelector(".order-details-items.ordered").outerText',
                    {"must_include": [lamp["sku"]]},
                ),
                (
                    "last",
                    "lambda:(() => { try { return document.querySelector('.order-details-items "
                    ".col.qty:not(th)').textContent } catch (e) { return '' } })()",
                    {"exact_match": "2"},
                ),
            ),
            [
                _goto(f"{S}/catalogsearch/result/?q=lamp&product_list_order=price_desc"),
                _click(".products-grid .product-item:nth-of-type(1) a.product-item-link"),
                _type("#qty", "2"),
                _click("#product-addtocart-button"),
                _click("a.showcart"),
                _click("#place-order"),
                _stop(),
            ],
            login=True,
            reset=True,
        )
    )
    tasks.append(
        _task(
            "shopping",
            f'Write a 1-star review titled "Too dim" for {lamp["name"]}.',
            f"{S}/product/{lamp['sku']}",
            _html(
                (
                    f"{S}/product/{lamp['sku']}",
                    "func:get_query_text(__page__, '.review-items')",
                    {"must_include": ["Too dim"]},
                ),
                (
                    f"{S}/product/{lamp['sku']}",
                    "lambda:(() => { try { return [...document.querySelectorAll("
                    "'.review-item')].at(-1).querySelector('.review-rating').textContent } catch (e) "
                    "{ return '' } })()",
                    {"exact_match": "1"},
                ),
            ),
            [
                {"action": "scroll", "text": "down"},
                _type("#summary_field", "Too dim"),
                _type("#review_field", "Not bright enough to read by."),
                {"action": "press", "selector": "#review-rating", "text": "End"},
                _click("#submit-review"),
                _stop(),
            ],
            login=True,
            reset=True,
        )
    )
    # Visual: stripes are only in the picture.
    striped = db.execute("SELECT * FROM products WHERE extras = 'stripes' ORDER BY id").fetchall()
    for product in striped[:3]:
        vqa = [
            {"question": f"Does this {product['kind']} have stripes? (yes/no)", "answer": "yes"},
            {"question": f"Is this {product['kind']} {product['colour']}? (yes/no)", "answer": "yes"},
        ]
        tasks.append(
            _task(
                "shopping",
                f"Add a striped {product['colour']} {product['kind']} to my wish list.",
                f"{S}/",
                {
                    "eval_types": ["page_image_query"],
                    "page_image_query": [
                        {
                            "eval_image_url": f"{S}/wishlist/",
                            "eval_image_class": ".products-grid.wishlist .product-image-photo",
                            "eval_vqa": vqa,
                        }
                    ],
                },
                [_goto(f"{S}/product/{product['sku']}"), _click("button.towishlist"), _stop()],
                login=True,
                reset=True,
            )
        )
    for product in striped[3:5]:
        query = _copy_query_image(site_images, product["image"], f"shopping_{product['sku']}.png")
        tasks.append(
            _task(
                "shopping",
                "Add the product in this picture to my cart.",
                f"{S}/",
                {
                    "eval_types": ["program_html", "page_image_query"],
                    "program_html": [
                        {
                            "url": f"{S}/checkout/cart/",
                            "locator": cart_locator,
                            "required_contents": {"must_include": [product["name"]]},
                        }
                    ],
                    "page_image_query": [
                        {
                            "eval_image_url": f"{S}/product/{product['sku']}",
                            "eval_image_class": ".product.media",
                            "eval_fuzzy_image_match": query,
                        }
                    ],
                },
                [
                    _goto(
                        f"{S}/catalogsearch/result/?q={shopping.KIND_NAMES[product['kind']].split()[-1]}"
                        f"&colour={product['colour']}"
                    ),
                    _click(f"a.product-item-link[href='/product/{product['sku']}']"),
                    _click("#product-addtocart-button"),
                    _stop(),
                ],
                login=True,
                reset=True,
                image=query,
            )
        )
    return tasks


def reddit_tasks(site_images: Path) -> list[dict[str, Any]]:
    db = _seeded(reddit)
    tasks = []
    posts = db.execute("SELECT * FROM posts ORDER BY id").fetchall()
    text_posts = [p for p in posts if not p["image"]]
    for post in text_posts[:3]:
        count = db.execute("SELECT COUNT(*) FROM comments WHERE post_id = ?", (post["id"],)).fetchone()[0]
        tasks.append(
            _task(
                "reddit",
                f'How many comments does the post "{post["title"]}" in /f/{post["forum"]} '
                "have? Answer with the number only.",
                f"{R}/f/{post['forum']}",
                _answer(str(count), exact_match=str(count)),
                [_click(f"a.submission__link[href='/f/{post['forum']}/{post['id']}']"), _stop(str(count))],
            )
        )
        tasks.append(
            _task(
                "reddit",
                f'Who submitted the post "{post["title"]}" in /f/{post["forum"]}?',
                f"{R}/f/{post['forum']}",
                _answer(post["author"], must_include=[post["author"]]),
                [_stop(post["author"])],
            )
        )
        tasks.append(
            _task(
                "reddit",
                f'Navigate to the comments section of the post "{post["title"]}" in /f/{post["forum"]}.',
                f"{R}/forums",
                _url(f"{R}/f/{post['forum']}/{post['id']}", "GOLD in PRED"),
                [
                    _click(f"a.forum-link[href='/f/{post['forum']}']"),
                    _click(f"a.submission__comments[href='/f/{post['forum']}/{post['id']}']"),
                    _stop(),
                ],
            )
        )
    books = db.execute("SELECT COUNT(*) FROM posts WHERE forum = 'books'").fetchone()[0]
    tasks.append(
        _task(
            "reddit",
            "How many posts are there in /f/books?",
            f"{R}/forums",
            _answer(str(books), one_of=[f"{books} posts"]),
            [_stop(f"{books} posts")],
        )
    )
    tasks.append(
        _task(
            "reddit",
            "Open the list of all forums.",
            f"{R}/",
            _url(f"{R}/forums"),
            [_click("a.site-nav__link[href='/forums']"), _stop()],
        )
    )
    tasks.append(
        _task(
            "reddit",
            "What did user bookworm42 write about pogo sticks? Answer N/A if nothing.",
            f"{R}/",
            _answer("N/A", fuzzy_match="N/A"),
            [_type("input[name='q']", "pogo", press_enter=True), _stop("N/A")],
        )
    )
    top = db.execute(
        "SELECT author, COUNT(*) AS n FROM posts WHERE forum = 'cycling' GROUP BY author ORDER BY n DESC, author"
    ).fetchall()
    if len(top) > 1 and top[0]["n"] > top[1]["n"]:
        tasks.append(
            _task(
                "reddit",
                "Which user submitted the most posts in /f/cycling?",
                f"{R}/f/cycling",
                _answer(
                    top[0]["author"], must_include=[top[0]["author"]], must_exclude=[row["author"] for row in top[1:]]
                ),
                [_stop(top[0]["author"])],
            )
        )
    # Visual: the scene and time of day are only in the picture.
    image_posts = [p for p in posts if p["image"]]
    for scene, time_of_day in [("skyline", "night"), ("mountain", "night"), ("beach", "day")]:
        post = next(p for p in image_posts if p["image"] == f"post_scene_{scene}_{time_of_day}.png")
        vqa = [
            {"question": f"Is this a photo taken at {time_of_day}? (yes/no)", "answer": "yes"},
            {"question": f"Is this a photo of a {scene}? (yes/no)", "answer": "yes"},
        ]
        tasks.append(
            _task(
                "reddit",
                f"Navigate to the comments section of an image post showing a {scene} at {time_of_day}.",
                f"{R}/forums",
                {
                    "eval_types": ["page_image_query"],
                    "page_image_query": [
                        {"eval_image_url": "last", "eval_image_class": ".submission__image", "eval_vqa": vqa}
                    ],
                },
                [
                    _goto(f"{R}/f/{post['forum']}"),
                    _click(f"a.submission__link[href='/f/{post['forum']}/{post['id']}']"),
                    _stop(),
                ],
            )
        )
        query = _copy_query_image(site_images, post["image"], f"reddit_{scene}_{time_of_day}.png")
        tasks.append(
            _task(
                "reddit",
                f"I'm trying to find a post with this picture in /f/{post['forum']}. Navigate to "
                "the comment section of one.",
                f"{R}/f/{post['forum']}",
                {
                    "eval_types": ["page_image_query"],
                    "page_image_query": [
                        {
                            "eval_image_url": "last",
                            "eval_image_class": ".submission__image",
                            "eval_fuzzy_image_match": query,
                        }
                    ],
                },
                [_click(f"a.submission__link[href='/f/{post['forum']}/{post['id']}']"), _stop()],
                image=query,
            )
        )
    # State changes (login): upvote, comment, submit.
    vote_locator = "document.querySelectorAll('div.submission__vote')[0].querySelector('form').getAttribute('class')"
    for post in [text_posts[3], image_posts[0]]:
        url = f"{R}/f/{post['forum']}/{post['id']}"
        tasks.append(
            _task(
                "reddit",
                f'Upvote the post "{post["title"]}" in /f/{post["forum"]}.',
                f"{R}/f/{post['forum']}",
                _html((url, vote_locator, {"must_include": ["vote vote--user-upvoted"]})),
                [_click(f"article[data-post-id='{post['id']}'] button.vote__up"), _stop()],
                login=True,
                reset=True,
            )
        )
    for post, text in [(text_posts[4], "Thanks, this was really helpful!"), (text_posts[5], "Count me in.")]:
        url = f"{R}/f/{post['forum']}/{post['id']}"
        tasks.append(
            _task(
                "reddit",
                f'Reply "{text}" to the post "{post["title"]}" in /f/{post["forum"]}.',
                f"{R}/f/{post['forum']}",
                _html((url, "func:get_query_text(__page__, '.comments')", {"must_include": [text]})),
                [
                    _click(f"a.submission__link[href='/f/{post['forum']}/{post['id']}']"),
                    _type(f"#reply_to_submission_{post['id']}_comment", text),
                    _click("#submit-comment"),
                    _stop(),
                ],
                login=True,
                reset=True,
            )
        )
    title = "Looking for a weekend cycling buddy"
    tasks.append(
        _task(
            "reddit",
            f'Create a post in /f/cycling titled "{title}" and stay on its page.',
            f"{R}/f/cycling",
            _html(
                (
                    "last",
                    "lambda:(() => { try { return document.querySelector('.submission__link')"
                    ".textContent } catch { return '' } })()",
                    {"exact_match": title},
                ),
                ("last", "func:get_query_text(__page__, '.submission__forum')", {"must_include": ["/f/cycling"]}),
            ),
            [
                _click("a.submit-link"),
                _type("#submission_title", title),
                _type("#submission_body", "Anyone near Pittsburgh up for 50 km on Saturdays?"),
                _click("#submission_submit"),
                _stop(),
            ],
            login=True,
            reset=True,
        )
    )
    return tasks


def build_all(images_root: Path) -> dict[str, list[dict[str, Any]]]:
    """All bundled tasks per site, numbered; `images_root` holds the sites' generated images."""
    suites = {
        "classifieds": classifieds_tasks(images_root / "classifieds"),
        "shopping": shopping_tasks(images_root / "shopping"),
        "reddit": reddit_tasks(images_root / "reddit"),
    }
    for tasks in suites.values():
        for task_id, task in enumerate(tasks):
            task["task_id"] = task_id
    return suites


def write_all() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for module in (classifieds, shopping, reddit):
            (root / module.DEFINITION.name).mkdir()
            module.write_images(root / module.DEFINITION.name)
        suites = build_all(root)
    for site, tasks in suites.items():
        (TASKS_DIR / f"{site}.json").write_text(json.dumps(tasks, indent=1) + "\n")
        print(f"{site}: {len(tasks)} tasks")


if __name__ == "__main__":
    write_all()
