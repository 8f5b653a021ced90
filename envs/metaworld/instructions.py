"""One short imperative instruction per Meta-World v3 task (keyed by the task name without ``-v3``).

Meta-World gives its tasks names only; these sentences are this toolkit's, written from what each
task's success condition asks for, so language-conditioned policies get a command per task."""

from __future__ import annotations

INSTRUCTIONS: dict[str, str] = {
    "assembly": "Pick up the nut and fit it over the peg.",
    "basketball": "Pick up the ball and drop it into the basket.",
    "bin-picking": "Move the cube from one bin into the other.",
    "box-close": "Pick up the lid and put it on the box.",
    "button-press-topdown": "Press the button down from above.",
    "button-press-topdown-wall": "Press the button down from above, past the wall.",
    "button-press": "Press the button in from the front.",
    "button-press-wall": "Reach past the wall and press the button in.",
    "coffee-button": "Press the button on the coffee machine.",
    "coffee-pull": "Pull the mug out from under the coffee machine.",
    "coffee-push": "Push the mug under the coffee machine.",
    "dial-turn": "Turn the dial.",
    "disassemble": "Lift the nut off the peg.",
    "door-close": "Close the door.",
    "door-lock": "Turn the lock to lock the door.",
    "door-open": "Open the door.",
    "door-unlock": "Turn the lock to unlock the door.",
    "hand-insert": "Put the gripper into the hole.",
    "drawer-close": "Close the drawer.",
    "drawer-open": "Open the drawer.",
    "faucet-open": "Turn the faucet handle to open it.",
    "faucet-close": "Turn the faucet handle to close it.",
    "hammer": "Pick up the hammer and drive the nail in.",
    "handle-press-side": "Press the handle down from the side.",
    "handle-press": "Press the handle down.",
    "handle-pull-side": "Pull the handle up from the side.",
    "handle-pull": "Pull the handle up.",
    "lever-pull": "Pull the lever up.",
    "pick-place-wall": "Pick up the puck and place it at the goal behind the wall.",
    "pick-out-of-hole": "Pick the peg up out of the hole.",
    "pick-place": "Pick up the puck and place it at the goal.",
    "plate-slide": "Slide the plate into the cabinet.",
    "plate-slide-side": "Slide the plate sideways into the cabinet.",
    "plate-slide-back": "Slide the plate back out of the cabinet.",
    "plate-slide-back-side": "Slide the plate sideways out of the cabinet.",
    "peg-insert-side": "Insert the peg into the hole from the side.",
    "peg-unplug-side": "Pull the peg out of the socket sideways.",
    "soccer": "Push the ball into the goal.",
    "stick-push": "Grab the stick and use it to push the bottle to the goal.",
    "stick-pull": "Grab the stick and use it to pull the bottle to the goal.",
    "push": "Push the puck to the goal.",
    "push-wall": "Push the puck around the wall to the goal.",
    "push-back": "Pull the puck back to the goal.",
    "reach": "Move the gripper to the goal.",
    "reach-wall": "Move the gripper past the wall to the goal.",
    "shelf-place": "Pick up the block and put it on the shelf.",
    "sweep-into": "Sweep the puck into the hole.",
    "sweep": "Sweep the puck off the edge of the table.",
    "window-open": "Slide the window open.",
    "window-close": "Slide the window closed.",
}


def instruction_for(task: str) -> str:
    """The instruction of ``task`` (a name without ``-v3``, as ``benchmarks.canonical_task`` returns)."""
    return INSTRUCTIONS[task]
