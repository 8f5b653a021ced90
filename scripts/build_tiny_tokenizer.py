"""Rebuild the bundled test tokenizer (magma/assets/tiny-tokenizer) from a small generated corpus.

Run: .venv/bin/python scripts/build_tiny_tokenizer.py
"""

import itertools
import random

from magma.tokenizer import TINY_TOKENIZER_DIR, build_tiny_tokenizer

SUBJECTS = ["the robot", "the agent", "a user", "the arm", "the gripper", "the model", "the camera"]
VERBS = ["picks up", "moves", "clicks", "opens", "pushes", "places", "types into", "scrolls", "looks at"]
OBJECTS = [
    "the red block",
    "the blue cup",
    "the search box",
    "the drawer",
    "the green button",
    "the mug",
    "the sponge",
    "the menu",
    "the link",
    "the table",
    "the screen",
    "the bowl",
]
PLACES = ["on the left", "on the right", "near the top", "below the shelf", "in the sink", "next to the plate"]
EXTRA = [
    "What is shown in this image?",
    "Describe the image in detail.",
    "What should the robot do next?",
    "click [12]",
    "type [3] [hello world] [1]",
    "scroll [down]",
    "press [Control+v]",
    "goto [http://localhost]",
    "stop [done]",
    "Coordinate: (0.17, 0.43). Mark: 3.",
    '{"TAP": {"MARK": 3}}',
    '{"SWIPE": "UP"}',
    "The answer is 42.",
    "Yes.",
    "No.",
    "user",
    "assistant",
    "system",
    "You are an agent that can see, talk and act.",
    "I see a table with a cup and a plate.",
]


def corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [f"{s} {v} {o} {p}." for s, v, o, p in itertools.product(SUBJECTS, VERBS, OBJECTS, PLACES)]
    rng.shuffle(lines)
    numbers = [" ".join(str(rng.randint(0, 999)) for _ in range(8)) for _ in range(200)]
    return lines + numbers + EXTRA * 20


if __name__ == "__main__":
    path = build_tiny_tokenizer(corpus(), TINY_TOKENIZER_DIR)
    print(f"wrote {path}")
