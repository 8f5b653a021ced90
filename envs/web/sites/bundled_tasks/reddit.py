"""The bundled Reddit tasks, built from the site's deterministic seed data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envs.web.sites import reddit
from envs.web.sites.bundled_tasks.common import (
    R,
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


def reddit_tasks(site_images: Path) -> list[dict[str, Any]]:
    db = seeded_db(reddit)
    tasks = []
    posts = db.execute("SELECT * FROM posts ORDER BY id").fetchall()
    text_posts = [p for p in posts if not p["image"]]
    for post in text_posts[:3]:
        count = db.execute("SELECT COUNT(*) FROM comments WHERE post_id = ?", (post["id"],)).fetchone()[0]
        tasks.append(
            vwa_task(
                "reddit",
                f'How many comments does the post "{post["title"]}" in /f/{post["forum"]} '
                "have? Answer with the number only.",
                f"{R}/f/{post['forum']}",
                answer_eval(str(count), exact_match=str(count)),
                [click_step(f"a.submission__link[href='/f/{post['forum']}/{post['id']}']"), stop_step(str(count))],
            )
        )
        tasks.append(
            vwa_task(
                "reddit",
                f'Who submitted the post "{post["title"]}" in /f/{post["forum"]}?',
                f"{R}/f/{post['forum']}",
                answer_eval(post["author"], must_include=[post["author"]]),
                [stop_step(post["author"])],
            )
        )
        tasks.append(
            vwa_task(
                "reddit",
                f'Navigate to the comments section of the post "{post["title"]}" in /f/{post["forum"]}.',
                f"{R}/forums",
                url_eval(f"{R}/f/{post['forum']}/{post['id']}", "GOLD in PRED"),
                [
                    click_step(f"a.forum-link[href='/f/{post['forum']}']"),
                    click_step(f"a.submission__comments[href='/f/{post['forum']}/{post['id']}']"),
                    stop_step(),
                ],
            )
        )
    books = db.execute("SELECT COUNT(*) FROM posts WHERE forum = 'books'").fetchone()[0]
    tasks.append(
        vwa_task(
            "reddit",
            "How many posts are there in /f/books?",
            f"{R}/forums",
            answer_eval(str(books), one_of=[f"{books} posts"]),
            [stop_step(f"{books} posts")],
        )
    )
    tasks.append(
        vwa_task(
            "reddit",
            "Open the list of all forums.",
            f"{R}/",
            url_eval(f"{R}/forums"),
            [click_step("a.site-nav__link[href='/forums']"), stop_step()],
        )
    )
    tasks.append(
        vwa_task(
            "reddit",
            "What did user bookworm42 write about pogo sticks? Answer N/A if nothing.",
            f"{R}/",
            answer_eval("N/A", fuzzy_match="N/A"),
            [type_step("input[name='q']", "pogo", press_enter=True), stop_step("N/A")],
        )
    )
    top = db.execute(
        "SELECT author, COUNT(*) AS n FROM posts WHERE forum = 'cycling' GROUP BY author ORDER BY n DESC, author"
    ).fetchall()
    if len(top) > 1 and top[0]["n"] > top[1]["n"]:
        tasks.append(
            vwa_task(
                "reddit",
                "Which user submitted the most posts in /f/cycling?",
                f"{R}/f/cycling",
                answer_eval(
                    top[0]["author"], must_include=[top[0]["author"]], must_exclude=[row["author"] for row in top[1:]]
                ),
                [stop_step(top[0]["author"])],
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
            vwa_task(
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
                    goto_step(f"{R}/f/{post['forum']}"),
                    click_step(f"a.submission__link[href='/f/{post['forum']}/{post['id']}']"),
                    stop_step(),
                ],
            )
        )
        query = copy_query_image(site_images, post["image"], f"reddit_{scene}_{time_of_day}.png")
        tasks.append(
            vwa_task(
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
                [click_step(f"a.submission__link[href='/f/{post['forum']}/{post['id']}']"), stop_step()],
                image=query,
            )
        )
    # State changes (login): upvote, comment, submit.
    vote_locator = "document.querySelectorAll('div.submission__vote')[0].querySelector('form').getAttribute('class')"
    for post in [text_posts[3], image_posts[0]]:
        url = f"{R}/f/{post['forum']}/{post['id']}"
        tasks.append(
            vwa_task(
                "reddit",
                f'Upvote the post "{post["title"]}" in /f/{post["forum"]}.',
                f"{R}/f/{post['forum']}",
                html_eval((url, vote_locator, {"must_include": ["vote vote--user-upvoted"]})),
                [click_step(f"article[data-post-id='{post['id']}'] button.vote__up"), stop_step()],
                login=True,
                reset=True,
            )
        )
    for post, text in [(text_posts[4], "Thanks, this was really helpful!"), (text_posts[5], "Count me in.")]:
        url = f"{R}/f/{post['forum']}/{post['id']}"
        tasks.append(
            vwa_task(
                "reddit",
                f'Reply "{text}" to the post "{post["title"]}" in /f/{post["forum"]}.',
                f"{R}/f/{post['forum']}",
                html_eval(
                    (url, "func:get_query_text(__page__, '.comments')", {"must_include": [text]}),
                    (
                        url,
                        "func:reddit_get_latest_comment_content_by_username(__page__, 'user')",
                        {"exact_match": text},
                    ),
                    (
                        url,
                        "func:reddit_get_parent_comment_username_of_latest_comment_by_username(__page__, 'user')",
                        {"exact_match": post["author"]},
                    ),
                ),
                [
                    click_step(f"a.submission__link[href='/f/{post['forum']}/{post['id']}']"),
                    type_step(f"#reply_to_submission_{post['id']}_comment", text),
                    click_step("#submit-comment"),
                    stop_step(),
                ],
                login=True,
                reset=True,
            )
        )
    title = "Looking for a weekend cycling buddy"
    tasks.append(
        vwa_task(
            "reddit",
            f'Create a post in /f/cycling titled "{title}" and stay on its page.',
            f"{R}/f/cycling",
            html_eval(
                (
                    "last",
                    "lambda:(() => { try { return document.querySelector('.submission__link')"
                    ".textContent } catch { return '' } })()",
                    {"exact_match": title},
                ),
                ("last", "func:get_query_text(__page__, '.submission__forum')", {"must_include": ["/f/cycling"]}),
            ),
            [
                click_step("a.submit-link"),
                type_step("#submission_title", title),
                type_step("#submission_body", "Anyone near Pittsburgh up for 50 km on Saturdays?"),
                click_step("#submission_submit"),
                stop_step(),
            ],
            login=True,
            reset=True,
        )
    )
    return tasks
