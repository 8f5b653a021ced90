"""The bundled Reddit site (in the spirit of VWA's Postmill forum): forums, text and image posts,
comments, votes, search, user pages, login, submitting posts and comments.

URLs mimic Postmill: `/forums`, `/f/<forum>`, `/f/<forum>/<id>/<slug>`, `/search?q=`, `/user/<name>`.
"""

from __future__ import annotations

import random
import re
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

SCHEMA = """
CREATE TABLE users (username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, display_name TEXT NOT NULL);
CREATE TABLE forums (name TEXT PRIMARY KEY, title TEXT NOT NULL, description TEXT NOT NULL);
CREATE TABLE posts (
    id INTEGER PRIMARY KEY, forum TEXT NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL, image TEXT NOT NULL,
    author TEXT NOT NULL, posted TEXT NOT NULL, base_score INTEGER NOT NULL
);
CREATE TABLE comments (
    id INTEGER PRIMARY KEY, post_id INTEGER NOT NULL, author TEXT NOT NULL, body TEXT NOT NULL,
    posted TEXT NOT NULL, score INTEGER NOT NULL
);
CREATE TABLE votes (username TEXT NOT NULL, post_id INTEGER NOT NULL, direction INTEGER NOT NULL,
    PRIMARY KEY (username, post_id));
"""

FORUMS = {
    "food": "Food",
    "pics": "Pictures",
    "books": "Books",
    "gaming": "Gaming",
    "music": "Music",
    "movies": "Movies",
    "cycling": "Cycling",
    "travel": "Travel",
    "diy": "Do It Yourself",
    "aww": "Cute animals",
}
AUTHORS = ["river_song", "pixelpusher", "bookworm42", "night_owl", "trailblazer", "quietstorm"]
SCENES = ["skyline", "mountain", "beach", "forest", "cat"]
SCENE_TITLES = {
    "skyline": "The city from my window",
    "mountain": "Made it to the top",
    "beach": "Low tide this morning",
    "forest": "Walk in the woods",
    "cat": "My cat found the sunny spot",
}
TEXT_TOPICS = {
    "food": ["Best way to cook rice?", "Sourdough starter tips", "Favourite spicy snack"],
    "books": ["Just finished a great mystery novel", "Recommend me a fantasy series", "Audiobooks or paper?"],
    "gaming": ["Which indie game surprised you?", "Controller or keyboard?", "Looking for co-op games"],
    "music": ["Album of the year so far", "Learning guitar at 40", "Vinyl is back"],
    "movies": ["Underrated sci-fi films", "Best movie soundtrack", "Remakes that worked"],
    "cycling": ["Commuting in the rain", "Tubeless tyres worth it?", "First century ride done"],
    "travel": ["Packing light for two weeks", "Night trains in Europe", "Favourite small museum"],
    "diy": ["Fixed a squeaky door", "Built a bookshelf", "Which drill to buy?"],
}
COMMENT_TEXTS = ["Great post!", "I disagree, honestly.", "Thanks for sharing.", "Where was this?", "Same here.", "lol"]
POSTS_PER_TEXT_FORUM = 6
IMAGE_POSTS = 24


def slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def seed(conn: sqlite3.Connection) -> None:
    """Deterministic forums, text and image posts, comments and votes (fixed RNG seed)."""
    rng = random.Random(20240503)
    for name in [TEST_USERNAME, *AUTHORS]:
        conn.execute("INSERT INTO users VALUES (?, ?, ?)", (name, hash_password(TEST_PASSWORD), name))
    for name, title in FORUMS.items():
        conn.execute("INSERT INTO forums VALUES (?, ?, ?)", (name, title, f"A forum about {title.lower()}."))
    posts = []
    for forum, topics in TEXT_TOPICS.items():
        for index in range(POSTS_PER_TEXT_FORUM):
            title = topics[index % len(topics)] + ("" if index < len(topics) else " (again)")
            posts.append((forum, title, f"{title}. What do you all think? Share your experience below.", ""))
    for index in range(IMAGE_POSTS):
        scene, time_of_day = SCENES[index % len(SCENES)], ["day", "night"][(index // len(SCENES)) % 2]
        forum = "aww" if scene == "cat" else rng.choice(["pics", "travel"])
        posts.append((forum, f"{SCENE_TITLES[scene]} #{index + 1}", "", f"post_scene_{scene}_{time_of_day}.png"))
    rng.shuffle(posts)
    for post_id, (forum, title, body, image) in enumerate(posts, start=1):
        author = TEST_USERNAME if post_id % 20 == 0 else rng.choice(AUTHORS)
        posted = f"2024-{1 + post_id // 28:02d}-{1 + post_id % 28:02d} {rng.randrange(24):02d}:00"
        conn.execute(
            "INSERT INTO posts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (post_id, forum, title, body, image, author, posted, rng.randrange(0, 200)),
        )
        for _ in range(rng.randrange(0, 5)):
            conn.execute(
                "INSERT INTO comments (post_id, author, body, posted, score) VALUES (?, ?, ?, ?, ?)",
                (post_id, rng.choice(AUTHORS), rng.choice(COMMENT_TEXTS), posted, rng.randrange(-3, 40)),
            )


def write_images(directory: Path) -> None:
    for scene in SCENES:
        for time_of_day in ("day", "night"):
            images.write_scene_image(directory / f"post_scene_{scene}_{time_of_day}.png", scene, time_of_day)


POST_SELECT = (
    "SELECT p.*, p.base_score + COALESCE((SELECT SUM(direction) FROM votes v WHERE v.post_id = p.id), 0) AS score, "
    "(SELECT COUNT(*) FROM comments c WHERE c.post_id = p.id) AS comment_count, "
    "(SELECT direction FROM votes v WHERE v.post_id = p.id AND v.username = ?) AS my_vote FROM posts p"
)
SORT_ORDERS = {"hot": "score DESC, p.id DESC", "new": "p.posted DESC, p.id DESC", "top": "score DESC, p.id ASC"}
SORT_ORDERS["hot"] = "comment_count + score / 10 DESC, p.id DESC"


def _forum_names(request: Request) -> dict[str, str]:
    return {"forum_names": [row[0] for row in request.db.execute("SELECT name FROM forums ORDER BY name")]}


def _post_list(request: Request, where: str = "", values: tuple = ()) -> list[sqlite3.Row]:
    order = SORT_ORDERS.get(request.query.get("sort", "hot"), SORT_ORDERS["hot"])
    return request.db.execute(f"{POST_SELECT} {where} ORDER BY {order}", (request.user, *values)).fetchall()


def _front(app: SiteApp, request: Request) -> Response:
    return app.render("listing.html", request, posts=_post_list(request), forum=None, heading="All posts")


def _forums(app: SiteApp, request: Request) -> Response:
    rows = request.db.execute(
        "SELECT f.*, (SELECT COUNT(*) FROM posts p WHERE p.forum = f.name) AS post_count FROM forums f ORDER BY name"
    ).fetchall()
    return app.render("forums.html", request, forums=rows)


def _forum(app: SiteApp, request: Request) -> Response:
    forum = request.db.execute("SELECT * FROM forums WHERE name = ?", (request.params["forum"],)).fetchone()
    if forum is None:
        return not_found("No such forum")
    posts = _post_list(request, "WHERE p.forum = ?", (forum["name"],))
    return app.render("listing.html", request, posts=posts, forum=forum, heading=f"/f/{forum['name']}")


def _load_post(request: Request) -> sqlite3.Row | None:
    return request.db.execute(
        f"{POST_SELECT} WHERE p.id = ? AND p.forum = ?",
        (request.user, request.params["post_id"], request.params["forum"]),
    ).fetchone()


def _post(app: SiteApp, request: Request) -> Response:
    post = _load_post(request)
    if post is None:
        return not_found("No such post")
    comments = request.db.execute("SELECT * FROM comments WHERE post_id = ? ORDER BY id", (post["id"],)).fetchall()
    return app.render("post.html", request, post=post, comments=comments, slug=slugify(post["title"]))


def _comment(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    post = _load_post(request)
    if post is None:
        return not_found("No such post")
    body = request.form.get("comment", "").strip()
    if body:
        request.db.execute(
            "INSERT INTO comments (post_id, author, body, posted, score) VALUES (?, ?, ?, '2024-07-01 12:00', 1)",
            (post["id"], request.user, body),
        )
    return redirect(f"/f/{post['forum']}/{post['id']}/{slugify(post['title'])}")


def _vote(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    post = request.db.execute("SELECT * FROM posts WHERE id = ?", (request.params["post_id"],)).fetchone()
    if post is None:
        return not_found("No such post")
    direction = {"1": 1, "-1": -1, "0": 0}.get(request.form.get("choice", ""), 0)
    request.db.execute("DELETE FROM votes WHERE username = ? AND post_id = ?", (request.user, post["id"]))
    if direction:
        request.db.execute("INSERT INTO votes VALUES (?, ?, ?)", (request.user, post["id"], direction))
    back = request.form.get("next", "")
    return redirect(back if back.startswith("/") else f"/f/{post['forum']}/{post['id']}/{slugify(post['title'])}")


def _submit(app: SiteApp, request: Request) -> Response:
    if (needed := app.require_login(request)) is not None:
        return needed
    forum_names = _forum_names(request)["forum_names"]
    if request.method == "GET":
        return app.render("submit.html", request, error=None, selected=request.query.get("forum", ""))
    form = request.form
    if form.get("forum") not in forum_names or not form.get("title", "").strip():
        return app.render("submit.html", request, error="Choose a forum and write a title.", selected="")
    cursor = request.db.execute(
        "INSERT INTO posts (forum, title, body, image, author, posted, base_score) "
        "VALUES (?, ?, ?, '', ?, '2024-07-01 12:00', 1)",
        (form["forum"], form["title"].strip(), form.get("body", ""), request.user),
    )
    return redirect(f"/f/{form['forum']}/{cursor.lastrowid}/{slugify(form['title'])}")


def _search(app: SiteApp, request: Request) -> Response:
    text = request.query.get("q", "")
    posts = _post_list(request, "WHERE p.title LIKE ? OR p.body LIKE ?", (f"%{text}%", f"%{text}%")) if text else []
    return app.render("listing.html", request, posts=posts, forum=None, heading=f"Search results for {text!r}")


def _user(app: SiteApp, request: Request) -> Response:
    name = request.params["username"]
    if request.db.execute("SELECT 1 FROM users WHERE username = ?", (name,)).fetchone() is None:
        return not_found("No such user")
    posts = _post_list(request, "WHERE p.author = ?", (name,))
    comments = request.db.execute(
        "SELECT c.*, p.forum, p.title FROM comments c JOIN posts p ON p.id = c.post_id WHERE c.author = ? "
        "ORDER BY c.id DESC",
        (name,),
    ).fetchall()
    return app.render("user.html", request, name=name, posts=posts, comments=comments, slugify=slugify)


def routes(router: Router) -> None:
    router.add("GET", "/", _front)
    router.add("GET", "/forums", _forums)
    router.add("GET", "/forums/all", _forums)
    router.add("GET", "/f/{forum}", _forum)
    router.add("GET", "/f/{forum}/{post_id:int}", _post)
    router.add("GET", "/f/{forum}/{post_id:int}/{slug}", _post)
    router.add("POST", "/f/{forum}/{post_id:int}/comment", _comment)
    router.add("POST", "/sv/{post_id:int}", _vote)
    router.add("GET", "/submit", _submit)
    router.add("POST", "/submit", _submit)
    router.add("GET", "/search", _search)
    router.add("GET", "/user/{username}", _user)
    add_login_routes(router, "/login", "/logout")


DEFINITION = SiteDefinition("reddit", SCHEMA, seed, write_images, routes, _forum_names)
