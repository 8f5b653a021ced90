"""The bundled Shopping tasks, built from the site's deterministic seed data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envs.web.sites import shopping
from envs.web.sites.bundled_tasks.common import (
    S,
    answer_eval,
    click_step,
    copy_query_image,
    goto_step,
    html_eval,
    seeded_db,
    stop_step,
    type_step,
    url_eval,
    vwa_task,
)


def shopping_tasks(site_images: Path) -> list[dict[str, Any]]:
    db = seeded_db(shopping)
    tasks = []
    select = shopping.PRODUCT_SELECT
    for kind, colour in [("mug", "red"), ("headphones", "black"), ("sneaker", "blue")]:
        rows = db.execute(f"{select} WHERE p.kind = ? GROUP BY p.id ORDER BY p.price, p.id", (kind,)).fetchall()
        cheapest = rows[0]
        search = f"{S}/catalogsearch/result/?q={shopping.KIND_NAMES[kind].split()[-1]}&product_list_order=price_asc"
        price = f"{cheapest['price']:.2f}"
        tasks.append(
            vwa_task(
                "shopping",
                f"What is the price of the cheapest {kind} in the store? Answer like 12.34.",
                f"{S}/",
                answer_eval(price, exact_match=price),
                [goto_step(search), stop_step(price)],
            )
        )
        tasks.append(
            vwa_task(
                "shopping",
                f"Open the product page of the cheapest {kind}.",
                f"{S}/",
                url_eval(f"{S}/product/{cheapest['sku']}"),
                [
                    goto_step(search),
                    click_step(".products-grid .product-item:nth-of-type(1) a.product-item-link"),
                    stop_step(),
                ],
            )
        )
        brand = rows[-1]["name"].split()[0]
        tasks.append(
            vwa_task(
                "shopping",
                f"Which brand makes the most expensive {kind}?",
                f"{S}/",
                answer_eval(brand, must_include=[brand]),
                [goto_step(search.replace("price_asc", "price_desc")), stop_step(brand)],
            )
        )
        coloured = [row for row in rows if row["colour"] == colour]
        if coloured:
            sku = coloured[0]["sku"]
            tasks.append(
                vwa_task(
                    "shopping",
                    f"What is the SKU of the cheapest {colour} {kind}?",
                    f"{S}/",
                    answer_eval(sku, must_include=[sku], must_exclude=[r["sku"] for r in rows if r["sku"] != sku][:3]),
                    [goto_step(f"{search}&colour={colour}"), stop_step(sku)],
                )
            )
    best = db.execute(f"{select} GROUP BY p.id HAVING review_count >= 3 ORDER BY rating DESC, p.id LIMIT 1").fetchone()
    tasks.append(
        vwa_task(
            "shopping",
            f'How many reviews does "{best["name"]}" ({best["sku"]}) have?',
            f"{S}/",
            answer_eval(str(best["review_count"]), one_of=[f"{best['review_count']} reviews"]),
            [goto_step(f"{S}/product/{best['sku']}"), stop_step(f"{best['review_count']} reviews")],
        )
    )
    tasks.append(
        vwa_task(
            "shopping",
            "How much does the store charge for a pogo stick? Answer N/A if it sells none.",
            f"{S}/",
            answer_eval("N/A", fuzzy_match="N/A"),
            [type_step("#search", "pogo stick", press_enter=True), stop_step("N/A")],
        )
    )
    for word in ["backpack", "lamp"]:
        tasks.append(
            vwa_task(
                "shopping",
                f"Search the store for {word}.",
                f"{S}/",
                url_eval(f"{S}/catalogsearch/result/?q={word}", "GOLD in PRED"),
                [type_step("#search", word, press_enter=True), stop_step()],
            )
        )
    tasks.append(
        vwa_task(
            "shopping",
            "Show me the Kitchen category sorted by price, lowest first.",
            f"{S}/",
            url_eval(f"{S}/category/kitchen?product_list_order=price_asc"),
            [
                click_step("a.category-link[href='/category/kitchen']"),
                goto_step(f"{S}/category/kitchen?product_list_order=price_asc"),
                stop_step(),
            ],
        )
    )
    tasks.append(
        vwa_task(
            "shopping",
            "What is the SKU of the product in my most recent order?",
            f"{S}/",
            answer_eval("B07042", must_include=["B07042"]),
            [goto_step(f"{S}/sales/order/history/"), click_step("a.action.view"), stop_step("B07042")],
            login=True,
        )
    )
    # State changes: cart, order, review, wish list.
    cart_locator = "document.querySelector('.cart.items').outerText"
    for kind in ["mug", "backpack"]:
        product = db.execute(f"{select} WHERE p.kind = ? GROUP BY p.id ORDER BY p.price, p.id", (kind,)).fetchone()
        tasks.append(
            vwa_task(
                "shopping",
                f"Add the cheapest {kind} to my cart.",
                f"{S}/",
                html_eval((f"{S}/checkout/cart/", cart_locator, {"must_include": [product["name"]]})),
                [
                    goto_step(f"{S}/catalogsearch/result/?q={kind}&product_list_order=price_asc"),
                    click_step(".products-grid .product-item:nth-of-type(1) a.product-item-link"),
                    click_step("#product-addtocart-button"),
                    stop_step(),
                ],
                login=True,
                reset=True,
            )
        )
    lamp = db.execute(f"{select} WHERE p.kind = 'lamp' GROUP BY p.id ORDER BY p.price DESC, p.id").fetchone()
    tasks.append(
        vwa_task(
            "shopping",
            "Buy two of the most expensive desk lamp.",
            f"{S}/",
            html_eval(  # graded the way VWA grades orders: the latest order found through Magento's REST API
                (
                    "func:shopping_get_latest_order_url()",
                    f"func:shopping_get_order_product_quantity(__page__, '{lamp['sku']}')",
                    {"exact_match": "2"},
                ),
                ("last", "func:shopping_get_order_product_name_list(__page__)", {"must_include": [lamp["name"]]}),
                (
                    "last",
                    f"func:shopping_get_order_product_option(__page__, '{lamp['sku']}', 'Color')",
                    {"exact_match": lamp["colour"].capitalize()},
                ),
            ),
            [
                goto_step(f"{S}/catalogsearch/result/?q=lamp&product_list_order=price_desc"),
                click_step(".products-grid .product-item:nth-of-type(1) a.product-item-link"),
                type_step("#qty", "2"),
                click_step("#product-addtocart-button"),
                click_step("a.showcart"),
                click_step("#place-order"),
                stop_step(),
            ],
            login=True,
            reset=True,
        )
    )
    tasks.append(
        vwa_task(
            "shopping",
            f'Write a 1-star review titled "Too dim" for {lamp["name"]}.',
            f"{S}/product/{lamp['sku']}",
            html_eval(
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
                ("last", f"func:shopping_get_sku_latest_review_rating('{lamp['sku']}')", {"exact_match": "20"}),
                ("last", f"func:shopping_get_sku_latest_review_title('{lamp['sku']}')", {"exact_match": "Too dim"}),
                ("last", f"func:shopping_get_sku_latest_review_author('{lamp['sku']}')", {"exact_match": "user"}),
                (
                    "last",
                    f"func:shopping_get_sku_latest_review_text('{lamp['sku']}')",
                    {"must_include": ["Not bright enough"]},
                ),
            ),
            [
                {"action": "scroll", "text": "down"},
                type_step("#summary_field", "Too dim"),
                type_step("#review_field", "Not bright enough to read by."),
                {"action": "press", "selector": "#review-rating", "text": "End"},
                click_step("#submit-review"),
                stop_step(),
            ],
            login=True,
            reset=True,
        )
    )
    # Product pages graded by VWA's page helpers (attributes table, price box, review tab, rating).
    blanket = db.execute(
        f"{select} WHERE p.kind = 'blanket' AND p.colour = 'green' GROUP BY p.id ORDER BY p.price, p.id"
    ).fetchone()
    if blanket is None:
        blanket = db.execute(f"{select} WHERE p.kind = 'blanket' GROUP BY p.id ORDER BY p.price, p.id").fetchone()
    tasks.append(
        vwa_task(
            "shopping",
            f"Open the page of the cheapest {blanket['colour']} fleece blanket.",
            f"{S}/",
            html_eval(
                (
                    "last",
                    "func:shopping_get_product_attributes(__page__, 'color |OR| colour')",
                    {"exact_match": blanket["colour"].capitalize()},
                ),
                ("last", "func:shopping_get_product_price(__page__)", {"exact_match": str(float(blanket["price"]))}),
            ),
            [
                goto_step(
                    f"{S}/catalogsearch/result/?q=blanket&colour={blanket['colour']}&product_list_order=price_asc"
                ),
                click_step(".products-grid .product-item:nth-of-type(1) a.product-item-link"),
                stop_step(),
            ],
        )
    )
    most_reviewed = db.execute(
        f"{select} WHERE p.kind = 'mug' GROUP BY p.id ORDER BY review_count DESC, rating DESC, p.id"
    ).fetchone()
    tasks.append(
        vwa_task(
            "shopping",
            "Open the page of the ceramic mug with the most reviews (the best rated one if several tie).",
            f"{S}/",
            html_eval(
                (
                    "last",
                    "func:shopping_get_num_reviews(__page__)",
                    {"exact_match": str(most_reviewed["review_count"])},
                ),
                (
                    "last",
                    "func:shopping_get_rating_as_percentage(__page__)",
                    {"exact_match": str(float(round(20 * most_reviewed["rating"])))},
                ),
            ),
            [goto_step(f"{S}/product/{most_reviewed['sku']}"), stop_step()],
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
            vwa_task(
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
                [goto_step(f"{S}/product/{product['sku']}"), click_step("button.towishlist"), stop_step()],
                login=True,
                reset=True,
            )
        )
    for product in striped[3:5]:
        query = copy_query_image(site_images, product["image"], f"shopping_{product['sku']}.png")
        tasks.append(
            vwa_task(
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
                    goto_step(
                        f"{S}/catalogsearch/result/?q={shopping.KIND_NAMES[product['kind']].split()[-1]}"
                        f"&colour={product['colour']}"
                    ),
                    click_step(f"a.product-item-link[href='/product/{product['sku']}']"),
                    click_step("#product-addtocart-button"),
                    stop_step(),
                ],
                login=True,
                reset=True,
                image=query,
            )
        )
    return tasks
