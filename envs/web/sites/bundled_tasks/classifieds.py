"""The bundled Classifieds tasks, built from the site's deterministic seed data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envs.web.sites import classifieds
from envs.web.sites.bundled_tasks.common import (
    C,
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


def classifieds_tasks(site_images: Path) -> list[dict[str, Any]]:
    db = seeded_db(classifieds)
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
            vwa_task(
                "classifieds",
                f"What is the price in dollars of the cheapest {colour} {kind}? Answer with the number only.",
                C,
                answer_eval(price, exact_match=price),
                [goto_step(search), stop_step(price)],
            )
        )
        tasks.append(
            vwa_task(
                "classifieds",
                f"Find me the cheapest {colour} {kind} on this site.",
                C,
                url_eval(item_url + str(cheapest["id"])),
                [goto_step(search), click_step(".results article:nth-of-type(1) a.listing-title"), stop_step()],
            )
        )
        expensive = rows[-1]
        tasks.append(
            vwa_task(
                "classifieds",
                f"In which city is the most expensive {colour} {kind} listed?",
                C,
                answer_eval(expensive["city"], must_include=[expensive["city"]]),
                [
                    goto_step(search.replace("price_asc", "price_desc")),
                    click_step(".results article:nth-of-type(1) a.listing-title"),
                    stop_step(expensive["city"]),
                ],
            )
        )
    for category in ["Cars", "Home"]:
        count = db.execute("SELECT COUNT(*) FROM items WHERE category = ?", (category,)).fetchone()[0]
        tasks.append(
            vwa_task(
                "classifieds",
                f"How many listings are in the {category} category?",
                C,
                answer_eval(str(count), one_of=[f"{count} listings", f"{count} items", f"{count} ads"]),
                [click_step(f"a[href$='sCategory={category}']"), stop_step(f"{count} listings")],
            )
        )
    kayaks = db.execute("SELECT * FROM items WHERE kind = 'kayak' ORDER BY price, id").fetchall()
    if kayaks[0]["colour"] != kayaks[-1]["colour"]:
        tasks.append(
            vwa_task(
                "classifieds",
                "What colour is the cheapest kayak? Answer with one colour.",
                C,
                answer_eval(
                    kayaks[0]["colour"], must_include=[kayaks[0]["colour"]], must_exclude=[kayaks[-1]["colour"]]
                ),
                [
                    goto_step(f"{C}/index.php?page=search&sCategory=Boats&sOrder=price_asc"),
                    stop_step(kayaks[0]["colour"]),
                ],
            )
        )
    tasks.append(
        vwa_task(
            "classifieds",
            "What is the price of the purple tuba listed on this site? Answer N/A if there is none.",
            C,
            answer_eval("N/A", fuzzy_match="N/A"),
            [type_step("input[name='sPattern']", "tuba", press_enter=True), stop_step("N/A")],
        )
    )
    for word in ["guitar", "sofa"]:
        tasks.append(
            vwa_task(
                "classifieds",
                f"Search the site for {word} listings.",
                C,
                url_eval(f"{C}/index.php?page=search&sPattern={word}", "GOLD in PRED"),
                [type_step("input[name='sPattern']", word, press_enter=True), stop_step()],
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
            vwa_task(
                "classifieds",
                f"Find the listing of the {row['colour']} {row['kind']} with a {row['extras']} in its photo.",
                C,
                url_eval(item_url + str(row["id"])),
                [goto_step(search), click_step(f"a.listing-title[href$='id={row['id']}']"), stop_step()],
            )
        )
        vqa = [
            {"question": f"Is there a {row['extras']} in this image? (yes/no)", "answer": "yes"},
            {"question": f"Is this {row['kind']} {row['colour']}? (yes/no)", "answer": "yes"},
        ]
        tasks.append(
            vwa_task(
                "classifieds",
                f"Navigate to a listing of a {row['colour']} {row['kind']} that has a {row['extras']}.",
                C,
                {
                    "eval_types": ["page_image_query"],
                    "page_image_query": [
                        {"eval_image_url": "last", "eval_image_class": ".item-photos", "eval_vqa": vqa}
                    ],
                },
                [goto_step(search), click_step(f"a.listing-title[href$='id={row['id']}']"), stop_step()],
            )
        )
    for item_id in (visual[0]["id"], 77):
        query = copy_query_image(site_images, f"item_{item_id}.png", f"classifieds_item_{item_id}.png")
        item = db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        tasks.append(
            vwa_task(
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
                    goto_step(f"{C}/index.php?page=search&sPattern={item['kind']}&sColor={item['colour']}"),
                    click_step(f"a.listing-title[href$='id={item_id}']"),
                    stop_step(),
                ],
                image=query,
            )
        )
    # State changes (login): comment, edit own listing, publish a new listing.
    chair = db.execute("SELECT * FROM items WHERE kind = 'chair' ORDER BY price, id").fetchone()
    comment = "Is this still available? I can pick it up on Saturday."
    tasks.append(
        vwa_task(
            "classifieds",
            f'Leave the comment "{comment}" on the cheapest chair.',
            C,
            html_eval(
                (
                    item_url + str(chair["id"]),
                    "document.querySelector('.comments').outerText",
                    {"must_include": [comment]},
                )
            ),
            [
                goto_step(f"{C}/index.php?page=search&sPattern=chair&sOrder=price_asc"),
                click_step(".results article:nth-of-type(1) a.listing-title"),
                type_step("#comment-body", comment),
                click_step("#post-comment"),
                stop_step(),
            ],
            login=True,
            reset=True,
        )
    )
    own = db.execute("SELECT * FROM items WHERE seller = 'user' ORDER BY id").fetchall()
    for item, new_price in [(own[0], 99), (own[1], 1234)]:
        tasks.append(
            vwa_task(
                "classifieds",
                f'Change the price of my listing "{item["title"]}" (id {item["id"]}) to ${new_price}.',
                C,
                html_eval(
                    (
                        item_url + str(item["id"]),
                        "func:get_query_text(__page__, '.price')",
                        {"must_include": [f"{new_price}.00"]},
                    )
                ),
                [
                    click_step("a[href*='page=user']"),
                    goto_step(f"{C}/index.php?page=item_edit&id={item['id']}"),
                    type_step("#price", str(new_price)),
                    click_step("#publish"),
                    stop_step(),
                ],
                login=True,
                reset=True,
            )
        )
    title = "Vintage red road bicycle"
    tasks.append(
        vwa_task(
            "classifieds",
            f'Publish a listing titled "{title}" for a red bicycle at $150 and stay on its page.',
            C,
            html_eval(
                (
                    "last",
                    "lambda:(() => { try { return document.querySelector('.item-title').textContent"
                    " } catch (e) { return '' } })()",
                    {"exact_match": title},
                ),
                ("last", "func:get_query_text(__page__, '.price')", {"must_include": ["150.00"]}),
            ),
            [
                click_step("a[href*='page=item_add']"),
                type_step("#title", title),
                type_step("#price", "150"),
                type_step("#description", "Light road bike, new tyres."),
                click_step("#publish"),
                stop_step(),
            ],
            login=True,
            reset=True,
        )
    )
    return tasks
