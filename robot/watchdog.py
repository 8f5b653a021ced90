"""The daemon's watchdog: what the robot may do, from how fresh the policy's actions are.

``running`` -> no fresh action for ``hold_after_s`` -> ``holding`` (the robot holds its position)
-> still none after ``safe_stop_after_s`` -> ``safe_stopped`` (the configured rest behaviour), which
is latched: only an operator's ``resume()`` leaves it. An e-stop latches ``estopped`` the same way.
A safety fault (a camera lost, a joint out of its limits) safe-stops at once.
"""

from __future__ import annotations

from enum import StrEnum


class ControlState(StrEnum):
    RUNNING = "running"
    HOLDING = "holding"
    SAFE_STOPPED = "safe_stopped"
    ESTOPPED = "estopped"


class Watchdog:
    def __init__(self, hold_after_s: float, safe_stop_after_s: float) -> None:
        self.hold_after_s = hold_after_s
        self.safe_stop_after_s = max(safe_stop_after_s, hold_after_s)
        self.last_fresh = 0.0
        self.latched: ControlState | None = None
        self.reason = ""
        self.holds = 0
        self.safe_stops = 0
        self.safe_stop_reasons: list[str] = []  # why each safe stop happened, in order
        self._state = ControlState.RUNNING

    def start(self, now: float) -> None:
        """A new episode: the policy gets ``safe_stop_after_s`` for its first action. An e-stop stays latched."""
        self.last_fresh = now
        if self.latched != ControlState.ESTOPPED:
            self.latched, self.reason = None, ""
        self._state = self.latched or ControlState.RUNNING

    def fresh_action(self, now: float) -> None:
        self.last_fresh = now

    def update(self, now: float) -> ControlState:
        if self.latched is None:
            age = now - self.last_fresh
            if age > self.safe_stop_after_s:
                self.safe_stop(f"no action from the policy for {age:.2f} s")
            elif age > self.hold_after_s:
                if self._state != ControlState.HOLDING:
                    self.holds += 1
                    self.reason = f"no action from the policy for {age:.2f} s"
                self._state = ControlState.HOLDING
            else:
                self._state, self.reason = ControlState.RUNNING, ""
        return self.state

    @property
    def state(self) -> ControlState:
        return self.latched or self._state

    def safe_stop(self, reason: str) -> None:
        if self.latched is None:
            self.latched, self.reason = ControlState.SAFE_STOPPED, reason
            self.safe_stops += 1
            self.safe_stop_reasons.append(reason)

    def estop(self, reason: str) -> None:
        self.latched, self.reason = ControlState.ESTOPPED, reason

    def resume(self, now: float) -> bool:
        """The operator's go-ahead: leave a latched stop; the hold timer starts over."""
        if self.latched is None:
            return False
        self.latched, self.reason = None, ""
        self.last_fresh = now
        self._state = ControlState.RUNNING
        return True
