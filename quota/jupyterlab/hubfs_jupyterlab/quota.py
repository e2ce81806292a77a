"""What the status bar and the notifications say, from the live home and the
quota controller.

Bytes come from the home itself (the ``user.hubfs.usage`` attribute of the
hubfs mount at ``$HOME``: the counters that refuse writes with EDQUOT);
state, enforcement and the policy's dates from the controller, asked with
those figures so that its words use the same bytes. Either may be missing:

* no controller (unset or unreachable): figures from the home, the level
  from the home's own zone (under / warning / full, cleanup mode), and the
  answer says the state is unknown;
* not a hubfs home: figures and state from the controller;
* neither: ``level`` is ``unknown`` and the status bar says so.

Everything here is plain functions over dicts, so it is tested without a
server (``tests/test_quota.py``).
"""

import os
from datetime import datetime

XATTR_USAGE = "user.hubfs.usage"

#: Levels in the order of gravity; the frontend notifies on entering any
#: level other than ``ok`` and ``unknown``.
LEVELS = ("unknown", "ok", "warning", "full", "violation", "grace", "lockout", "cleanup", "blocked")

#: Status bar colour class per level.
COLOURS = {
    "unknown": "unknown",
    "ok": "ok",
    "warning": "warning",
}


def colour(level):
    """``ok`` (plain), ``warning`` (amber) or ``critical`` (red)."""
    return COLOURS.get(level, "critical")


def parse_usage(text):
    """Parses ``bytes=… inodes=… quota_bytes=… quota_inodes=… baseline=0|1
    mode=normal|cleanup zone=under|warning|full``; None if not understood."""
    fields = {}
    for part in text.split():
        if "=" not in part:
            return None
        k, v = part.split("=", 1)
        fields[k] = v
    try:
        return {
            "bytes": int(fields["bytes"]),
            "inodes": int(fields["inodes"]),
            "quota_bytes": max(0, int(fields.get("quota_bytes", "0"))),
            "quota_inodes": max(0, int(fields.get("quota_inodes", "0"))),
            "baseline": fields.get("baseline") == "1",
            "cleanup": fields.get("mode") == "cleanup",
            "zone": fields.get("zone", "under"),
        }
    except (KeyError, ValueError):
        return None


def read_live(home):
    """The live figures of the hubfs home at ``home``, or None if it is not
    one (no attribute, no user attributes on that filesystem, unreadable)."""
    try:
        raw = os.getxattr(home, XATTR_USAGE)
    except OSError:
        return None
    return parse_usage(raw.decode("utf-8", "replace"))


_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def _unit_of(n):
    for size, name in _UNITS:
        if n >= size:
            return size, name
    return 1, "B"


def _num(x):
    s = "%.1f" % x
    return s[:-2] if s.endswith(".0") else s


def label(used, quota):
    """``Home 3.2 of 10 GiB`` (both in the quota's unit)."""
    if used is None:
        return "Home: quota unknown"
    if not quota:
        size, name = _unit_of(used)
        return "Home %s %s (no quota)" % (_num(used / size), name)
    size, name = _unit_of(quota)
    return "Home %s of %s %s" % (_num(used / size), _num(quota / size), name)


def human(n):
    size, name = _unit_of(n)
    return "%s %s" % (_num(n / size), name)


def _when(iso):
    """``Tue 9 Dec 14:00 UTC`` from the controller's RFC 3339 time."""
    try:
        t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return str(iso)
    return t.strftime("%a %-d %b %Y %H:%M UTC")


def level_of(live, status):
    """The level the status bar shows, from the live figures and the
    controller's answer (either may be None)."""
    enforcement = (status or {}).get("enforcement", "none")
    state = (status or {}).get("quota_state")
    if enforcement == "blocked":
        return "blocked"
    if enforcement == "cleanup" or (live and live["cleanup"]):
        return "cleanup"
    if state in ("violation", "lockout"):
        if (status or {}).get("next_enforcement"):
            return "grace"
        return state
    if live and live["baseline"] and live["zone"] == "full":
        return "full"
    if state == "nearing-limit" or (live and live["zone"] in ("warning", "full")):
        return "warning"
    if state is None and not live:
        return "unknown"
    return "ok"


def notice(level, used, quota, status):
    """What the notification on entering ``level`` says: what it means and
    what happens when."""
    quota_h = human(quota) if quota else "your quota"
    pct = " (%d%%)" % round(used * 100 / quota) if quota and used is not None else ""
    usage = "%s of %s%s" % (human(used), quota_h, pct) if used is not None else "unknown"
    nxt = (status or {}).get("next_enforcement") or None
    then = ""
    if nxt:
        days = nxt.get("days_left", 0)
        grace = "today" if days == 0 else ("1 day" if days == 1 else "%d days" % days)
        if nxt.get("enforcement") == "blocked":
            then = (
                " Your server will be stopped at %s (%s of grace left) unless usage drops below %s;"
                " you can log in again and delete files once it is back under."
                % (_when(nxt.get("at")), grace, quota_h)
            )
        else:
            then = (
                " Writes will be blocked at %s (%s of grace left) unless usage drops below %s;"
                " you can still log in and delete."
                % (_when(nxt.get("at")), grace, quota_h)
            )
    space = " Open \u201cWhat uses my space?\u201d to find what to delete."
    if level == "warning":
        warn = (status or {}).get("record", {}).get("warn_fraction", 0.8)
        return (
            "warning",
            "Your home uses %s, above the warning line of %d%%. Writes will fail with"
            " \u201cDisk quota exceeded\u201d at %s.%s" % (usage, round(warn * 100), quota_h, space),
        )
    if level == "full":
        return (
            "error",
            "Your home is full: %s. Saving and writing fail with \u201cDisk quota exceeded\u201d"
            " until you delete files; deleting always works.%s" % (usage, space),
        )
    if level == "cleanup":
        return (
            "error",
            "Your home is in cleanup mode (%s): writes are refused, but you can delete files;"
            " writes are allowed again as soon as usage drops below %s.%s%s"
            % (usage, quota_h, then, space),
        )
    if level == "blocked":
        return (
            "error",
            "Your home is over its quota (%s): your server will be stopped now and cannot be"
            " started again until usage drops below %s. Contact your JupyterHub administrators."
            % (usage, quota_h),
        )
    if level == "grace":
        return (
            "error",
            "Your home is over its quota: %s. You are in the grace period.%s%s" % (usage, then, space),
        )
    if level in ("violation", "lockout"):
        msg = (status or {}).get("message") or "Your home is over its quota: %s." % usage
        return ("error", msg + then)
    if level == "ok":
        return ("success", "Your home is back under its quota's warning line: %s." % usage)
    return ("info", "Your home's quota is not known right now.")


def summary(live, status, controller_error, home, has_controller):
    """The JSON the frontend polls (``GET /hubfs/quota``)."""
    record = (status or {}).get("record") or {}
    if live and live["baseline"]:
        used, quota, figures = live["bytes"], live["quota_bytes"], "home"
    elif record.get("actual_bytes", -1) >= 0:
        used, quota, figures = record["actual_bytes"], record.get("quota_bytes", 0), "controller"
    elif live:
        used, quota, figures = live["bytes"], live["quota_bytes"], "home"
    else:
        used, quota, figures = None, None, None
    level = level_of(live, status)
    kind, text = notice(level, used, quota, status)
    notes = []
    if live is None:
        notes.append("%s is not a hubfs home: figures from the quota controller." % home)
    elif not live["baseline"]:
        notes.append("Your home is still being measured: figures may grow.")
    if not has_controller:
        notes.append("No quota controller is configured: state and policy are not known here.")
    elif controller_error:
        notes.append(
            "The quota controller could not be reached (%s): figures from your home; state and"
            " policy are not known right now." % controller_error
        )
    return {
        "level": level,
        "colour": colour(level),
        "label": label(used, quota),
        "used_bytes": used,
        "quota_bytes": quota,
        "figures": figures,
        "state": (status or {}).get("quota_state"),
        "enforcement": (status or {}).get("enforcement"),
        "state_since": record.get("state_since"),
        "next_enforcement": (status or {}).get("next_enforcement"),
        "message": (status or {}).get("message"),
        "notice": {"type": kind, "message": text},
        "notes": notes,
        "live": live,
    }
