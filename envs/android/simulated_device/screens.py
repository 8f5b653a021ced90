"""The simulated phone's screens: a launcher and "Sim App" (``com.example.simapp``), laid out for the current
display size, with the state that taps, swipes, keys and typed text change.

Sim App's activities: ``.MainActivity`` (buttons Form / Settings / Secure and a scrollable list of items; a
long press on an item asks to delete it), ``.DetailActivity`` (an item with a Favourite checkbox),
``.FormActivity`` (two text fields and Save, which opens a dialog), ``.SettingsActivity`` (two switches and
Reset, which asks in a dialog) and ``.SecureActivity`` (a FLAG_SECURE screen: no hierarchy, black screencap).
App data (items, favourites, switches, saved notes) lives until ``pm clear``; the rest until ``am force-stop``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

APP_PACKAGE = "com.example.simapp"
LAUNCHER_PACKAGE = "com.google.android.apps.nexuslauncher"
LAUNCHER_ACTIVITY = "com.google.android.apps.nexuslauncher.NexusLauncherActivity"
ADB_KEYBOARD_PACKAGE = "com.android.adbkeyboard"
ACTIVITIES = {
    "main": ".MainActivity",
    "detail": ".DetailActivity",
    "form": ".FormActivity",
    "settings": ".SettingsActivity",
    "secure": ".SecureActivity",
}
ITEM_COUNT = 40
LONG_PRESS_MS = 500


@dataclass
class SimNode:
    """One view: what uiautomator reports about it, how it is drawn (``style``) and what a tap does."""

    cls: str
    bounds: tuple[int, int, int, int]
    text: str = ""
    resource_id: str = ""
    content_desc: str = ""
    hint: str = ""
    style: str = "text"
    clickable: bool = False
    long_clickable: bool = False
    checkable: bool = False
    checked: bool = False
    scrollable: bool = False
    focusable: bool = False
    focused: bool = False
    password: bool = False
    package: str = APP_PACKAGE
    children: list[SimNode] = field(default_factory=list)
    on_tap: Callable[[], None] | None = None
    on_long_press: Callable[[], None] | None = None
    on_scroll: Callable[[int], None] | None = None

    def walk(self) -> list[SimNode]:
        nodes = [self]
        for child in self.children:
            nodes.extend(child.walk())
        return nodes

    def contains(self, x: float, y: float) -> bool:
        return self.bounds[0] <= x < self.bounds[2] and self.bounds[1] <= y < self.bounds[3]


@dataclass
class AppData:
    """What Sim App stores on disk: cleared by ``pm clear``."""

    items: list[str] = field(default_factory=lambda: [f"Item {index}" for index in range(1, ITEM_COUNT + 1)])
    favourites: set[str] = field(default_factory=set)
    wifi_only: bool = True
    dark_mode: bool = False
    notes: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class AppSession:
    """What Sim App holds in memory: lost on ``am force-stop``."""

    stack: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=lambda: {"name": "", "note": ""})
    focus: str | None = None
    dialog: str | None = None
    dialog_item: str = ""
    scroll: int = 0
    detail_item: str = ""


class Phone:
    """The screens and their state; every method is called under the device's lock."""

    def __init__(self, width: int, height: int, adb_keyboard: bool = False) -> None:
        self.physical = (width, height)
        self.rotation = 0
        self.installed = {APP_PACKAGE, LAUNCHER_PACKAGE} | ({ADB_KEYBOARD_PACKAGE} if adb_keyboard else set())
        self.data = AppData()
        self.session: AppSession | None = None  # None: the app is not running
        self.foreground = "launcher"  # or "app"
        self.version = 0  # bumped on every change of what is shown

    # -- geometry ------------------------------------------------------------------------------------

    @property
    def size(self) -> tuple[int, int]:
        """The display size as shown (landscape when rotated 90 or 270 degrees)."""
        width, height = self.physical
        return (height, width) if self.rotation % 2 else (width, height)

    # -- app lifecycle -------------------------------------------------------------------------------

    def launch(self, activity: str | None = None) -> None:
        """Start Sim App (``activity`` one of ACTIVITIES' keys; None: resume, or the main activity)."""
        if self.session is None:
            self.session = AppSession(stack=["main"])
        if activity is not None and self.session.stack[-1] != activity:
            self.session.stack = ["main"] if activity == "main" else ["main", activity]
        self.foreground = "app"
        self._changed()

    def force_stop(self) -> None:
        self.session = None
        self.foreground = "launcher"
        self._changed()

    def clear_data(self) -> None:
        self.force_stop()
        self.data = AppData()

    @property
    def activity(self) -> tuple[str, str]:
        """(package, activity class) in the foreground."""
        if self.foreground == "app" and self.session is not None:
            return APP_PACKAGE, ACTIVITIES[self.session.stack[-1]]
        return LAUNCHER_PACKAGE, LAUNCHER_ACTIVITY

    @property
    def secure(self) -> bool:
        return self.foreground == "app" and self.session is not None and self.session.stack[-1] == "secure"

    def _changed(self) -> None:
        self.version += 1

    # -- input ---------------------------------------------------------------------------------------

    def _targets(self, x: float, y: float) -> list[SimNode]:
        """Nodes under (x, y), innermost last; a dialog takes every touch."""
        root = self.layout()
        return [node for node in root.walk() if node.contains(x, y)]

    def tap(self, x: float, y: float) -> None:
        for node in reversed(self._targets(x, y)):
            if node.on_tap is not None:
                node.on_tap()
                self._changed()
                return

    def long_press(self, x: float, y: float) -> None:
        for node in reversed(self._targets(x, y)):
            if node.on_long_press is not None:
                node.on_long_press()
                self._changed()
                return

    def swipe(self, x0: float, y0: float, x1: float, y1: float, duration_ms: int) -> None:
        if abs(x1 - x0) + abs(y1 - y0) < 10:
            (self.long_press if duration_ms >= LONG_PRESS_MS else self.tap)(x0, y0)
            return
        if abs(y1 - y0) < abs(x1 - x0):
            return  # no horizontal pager on these screens
        for node in reversed(self._targets(x0, y0)):
            if node.on_scroll is not None:
                node.on_scroll(round(y0 - y1))
                self._changed()
                return

    def key(self, code: str) -> None:
        if code == "KEYCODE_HOME":
            self.foreground = "launcher"
        elif code == "KEYCODE_BACK":
            self._back()
        elif code == "KEYCODE_ENTER" and self.session is not None and self.session.focus == "name":
            self.session.focus = "note"
        elif code == "KEYCODE_DEL" and self.session is not None and self.session.focus:
            self.session.fields[self.session.focus] = self.session.fields[self.session.focus][:-1]
        elif code == "KEYCODE_APP_SWITCH":
            pass
        self._changed()

    def type_text(self, text: str) -> None:
        session = self.session
        if self.foreground == "app" and session is not None and session.focus and not session.dialog:
            session.fields[session.focus] += text
            self._changed()

    def _back(self) -> None:
        session = self.session
        if self.foreground != "app" or session is None:
            return
        if session.dialog:
            session.dialog = None
        elif session.focus:
            session.focus = None  # the soft keyboard would close first
        elif len(session.stack) > 1:
            session.stack.pop()
        else:
            self.foreground = "launcher"

    # -- layout --------------------------------------------------------------------------------------

    def layout(self) -> SimNode:
        """The focused window's view tree (a dialog's window alone when one is open), as uiautomator dumps it."""
        return self.layers()[-1]

    def layers(self) -> list[SimNode]:
        """The windows on screen, bottom first: the activity, then an open dialog."""
        width, height = self.size
        unit = min(width, height) / 540
        root = SimNode("android.widget.FrameLayout", (0, 0, width, height), style="background")
        root.package = self.activity[0]
        if self.foreground != "app" or self.session is None:
            self._launcher(root, unit)
            return [root]
        screen = self.session.stack[-1]
        bar = round(96 * unit)
        title = {"main": "Sim App", "detail": self.session.detail_item, "form": "New note", "settings": "Settings"}
        root.children.append(
            SimNode(
                "android.widget.TextView",
                (0, 0, width, bar),
                title.get(screen, "Secure"),
                resource_id=f"{APP_PACKAGE}:id/title",
                style="title",
            )
        )
        getattr(self, f"_{screen}")(root, unit, bar)
        if self.session.dialog:
            return [root, self._dialog(unit)]
        return [root]

    def _button(self, box: tuple[int, int, int, int], text: str, name: str, on_tap: Callable[[], None]) -> SimNode:
        return SimNode(
            "android.widget.Button",
            box,
            text,
            resource_id=f"{APP_PACKAGE}:id/{name}",
            style="button",
            clickable=True,
            focusable=True,
            on_tap=on_tap,
        )

    def _launcher(self, root: SimNode, unit: float) -> None:
        root.package = LAUNCHER_PACKAGE
        size = round(120 * unit)
        x, y = round(40 * unit), round(200 * unit)
        icon = SimNode(
            "android.widget.TextView",
            (x, y, x + size, y + size + round(30 * unit)),
            "Sim App",
            content_desc="Sim App",
            style="icon",
            clickable=True,
            long_clickable=True,
            focusable=True,
            package=LAUNCHER_PACKAGE,
            on_tap=self.launch,
        )
        clock = SimNode("android.widget.TextClock", (x, round(60 * unit), x + 4 * size, round(130 * unit)), "12:00")
        clock.package, clock.style = LAUNCHER_PACKAGE, "clock"
        root.children += [clock, icon]

    def _go(self, screen: str) -> Callable[[], None]:
        def go() -> None:
            assert self.session is not None
            self.session.stack.append(screen)
            self.session.focus = None

        return go

    def _main(self, root: SimNode, unit: float, top: int) -> None:
        width, height = self.size
        session = self.session
        assert session is not None
        gap, button_height = round(12 * unit), round(72 * unit)
        button_width = (width - 4 * gap) // 3
        y = top + gap
        for index, (label, screen) in enumerate((("Form", "form"), ("Settings", "settings"), ("Secure", "secure"))):
            x = gap + index * (button_width + gap)
            root.children.append(
                self._button((x, y, x + button_width, y + button_height), label, f"open_{screen}", self._go(screen))
            )
        list_top = y + button_height + gap
        row = round(88 * unit)
        visible = max(1, (height - list_top) // row)
        session.scroll = max(0, min(session.scroll, len(self.data.items) - visible))
        listing = SimNode(
            "androidx.recyclerview.widget.RecyclerView",
            (0, list_top, width, height),
            resource_id=f"{APP_PACKAGE}:id/item_list",
            style="list",
            scrollable=True,
            focusable=True,
        )

        def scroll(pixels: int) -> None:
            session.scroll = max(0, min(session.scroll + round(pixels / row), len(self.data.items) - visible))

        listing.on_scroll = scroll
        for offset, name in enumerate(self.data.items[session.scroll : session.scroll + visible]):
            box = (0, list_top + offset * row, width, list_top + (offset + 1) * row)
            entry = SimNode(
                "android.widget.LinearLayout",
                box,
                resource_id=f"{APP_PACKAGE}:id/item_row",
                style="row",
                clickable=True,
                long_clickable=True,
                focusable=True,
                on_tap=self._open_item(name),
                on_long_press=self._ask_delete(name),
            )
            label = f"{name} *" if name in self.data.favourites else name
            entry.children.append(
                SimNode(
                    "android.widget.TextView",
                    (box[0] + round(24 * unit), box[1], box[2], box[3]),
                    label,
                    resource_id=f"{APP_PACKAGE}:id/item_name",
                )
            )
            listing.children.append(entry)
        root.children.append(listing)

    def _open_item(self, name: str) -> Callable[[], None]:
        def open_item() -> None:
            assert self.session is not None
            self.session.detail_item = name
            self.session.stack.append("detail")

        return open_item

    def _ask_delete(self, name: str) -> Callable[[], None]:
        def ask() -> None:
            assert self.session is not None
            self.session.dialog, self.session.dialog_item = "delete", name

        return ask

    def _detail(self, root: SimNode, unit: float, top: int) -> None:
        width, _ = self.size
        session = self.session
        assert session is not None
        name, pad = session.detail_item, round(24 * unit)
        root.children.append(
            SimNode("android.widget.TextView", (pad, top + pad, width - pad, top + round(100 * unit)), f"About {name}")
        )

        def toggle() -> None:
            self.data.favourites ^= {name}

        root.children.append(
            SimNode(
                "android.widget.CheckBox",
                (pad, top + round(120 * unit), width - pad, top + round(190 * unit)),
                "Favourite",
                resource_id=f"{APP_PACKAGE}:id/favourite",
                style="switch",
                clickable=True,
                checkable=True,
                checked=name in self.data.favourites,
                focusable=True,
                on_tap=toggle,
            )
        )

    def _form(self, root: SimNode, unit: float, top: int) -> None:
        width, _ = self.size
        session = self.session
        assert session is not None
        pad, field_height = round(24 * unit), round(80 * unit)
        y = top + pad
        for name, hint in (("name", "Name"), ("note", "Note")):

            def focus(name: str = name) -> None:
                session.focus = name

            root.children.append(
                SimNode(
                    "android.widget.EditText",
                    (pad, y, width - pad, y + field_height),
                    session.fields[name],
                    resource_id=f"{APP_PACKAGE}:id/{name}_input",
                    hint=hint,
                    style="field",
                    clickable=True,
                    long_clickable=True,
                    focusable=True,
                    focused=session.focus == name,
                    on_tap=focus,
                )
            )
            y += field_height + pad

        def save() -> None:
            self.data.notes.append((session.fields["name"], session.fields["note"]))
            session.dialog, session.focus = "saved", None

        root.children.append(self._button((pad, y, width - pad, y + round(72 * unit)), "Save", "save", save))
        if self.data.notes:
            text = f"Saved notes: {len(self.data.notes)}"
            box = (pad, y + round(96 * unit), width - pad, y + round(150 * unit))
            root.children.append(SimNode("android.widget.TextView", box, text, resource_id=f"{APP_PACKAGE}:id/count"))

    def _settings(self, root: SimNode, unit: float, top: int) -> None:
        width, _ = self.size
        pad, row = round(24 * unit), round(90 * unit)
        y = top + pad
        switches = (("wifi_only", "Sync on Wi-Fi only", "wifi_switch"), ("dark_mode", "Dark mode", "dark_mode_switch"))
        for attribute, label, name in switches:

            def toggle(attribute: str = attribute) -> None:
                setattr(self.data, attribute, not getattr(self.data, attribute))

            root.children.append(
                SimNode(
                    "android.widget.Switch",
                    (pad, y, width - pad, y + row - pad // 2),
                    label,
                    resource_id=f"{APP_PACKAGE}:id/{name}",
                    style="switch",
                    clickable=True,
                    checkable=True,
                    checked=getattr(self.data, attribute),
                    focusable=True,
                    on_tap=toggle,
                )
            )
            y += row

        def ask() -> None:
            assert self.session is not None
            self.session.dialog = "reset"

        root.children.append(self._button((pad, y, width - pad, y + round(72 * unit)), "Reset settings", "reset", ask))

    def _secure(self, root: SimNode, unit: float, top: int) -> None:
        width, _ = self.size
        box = (round(24 * unit), top + round(40 * unit), width - round(24 * unit), top + round(120 * unit))
        root.children.append(SimNode("android.widget.TextView", box, "Enter your PIN"))

    def _dialog(self, unit: float) -> SimNode:
        """The open dialog as its own window (uiautomator dumps the focused window only)."""
        session = self.session
        assert session is not None
        width, height = self.size
        pad = round(24 * unit)
        box = (pad * 2, height // 2 - round(150 * unit), width - pad * 2, height // 2 + round(150 * unit))
        window = SimNode("android.widget.FrameLayout", (0, 0, width, height), style="dim")
        panel = SimNode("android.widget.LinearLayout", box, resource_id="android:id/parentPanel", style="dialog")
        window.children.append(panel)
        if session.dialog == "saved":
            name = session.fields["name"] or "(no name)"
            message, buttons = f"Saved note for {name}", [("OK", self._close_dialog)]
        elif session.dialog == "reset":
            message, buttons = "Reset all settings?", [("Cancel", self._close_dialog), ("Reset", self._reset_settings)]
        else:
            message = f"Delete {session.dialog_item}?"
            buttons = [("Cancel", self._close_dialog), ("Delete", self._delete_item)]
        panel.children.append(
            SimNode(
                "android.widget.TextView",
                (box[0] + pad, box[1] + pad, box[2] - pad, box[1] + round(150 * unit)),
                message,
                resource_id="android:id/message",
            )
        )
        button_width = (box[2] - box[0] - pad * (len(buttons) + 1)) // len(buttons)
        for index, (label, action) in enumerate(buttons):
            x = box[0] + pad + index * (button_width + pad)
            button = self._button((x, box[3] - round(100 * unit), x + button_width, box[3] - pad), label, "", action)
            button.resource_id = f"android:id/button{index + 1}"
            panel.children.append(button)
        return window

    def _close_dialog(self) -> None:
        assert self.session is not None
        self.session.dialog = None

    def _reset_settings(self) -> None:
        self.data.wifi_only, self.data.dark_mode = AppData().wifi_only, AppData().dark_mode
        self._close_dialog()

    def _delete_item(self) -> None:
        assert self.session is not None
        if self.session.dialog_item in self.data.items:
            self.data.items.remove(self.session.dialog_item)
        self.data.favourites.discard(self.session.dialog_item)
        self._close_dialog()
