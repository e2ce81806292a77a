"""Unit tests of the server extension's logic (no server, no browser):
what the status bar and the notifications say from the live figures and
the controller's answer (each missing in turn), and the space panel's
paths (hostile ones refused, symlinks never followed). Run by
tests/tests/lab_quota.rs with the JupyterLab venv's Python."""

import os
import tempfile
import unittest

from hubfs_jupyterlab import quota, space

MiB = 1 << 20


def live(used, q=20 * MiB, zone="under", cleanup=False, baseline=True):
    return {
        "bytes": used,
        "inodes": 3,
        "quota_bytes": q,
        "quota_inodes": 0,
        "baseline": baseline,
        "cleanup": cleanup,
        "zone": zone,
    }


class Levels(unittest.TestCase):
    def test_parse_what_the_home_layer_writes(self):
        v = quota.parse_usage(
            "bytes=17825792 inodes=4 quota_bytes=20971520 quota_inodes=0 baseline=1 mode=normal zone=warning"
        )
        self.assertEqual(v, live(17 * MiB, zone="warning") | {"inodes": 4})
        self.assertIsNone(quota.parse_usage("bytes=x inodes=1"))
        self.assertIsNone(quota.parse_usage("garbage"))

    def test_label_uses_the_quotas_unit(self):
        self.assertEqual(quota.label(int(3.2 * (1 << 30)), 10 << 30), "Home 3.2 of 10 GiB")
        self.assertEqual(quota.label(17 * MiB, 20 * MiB), "Home 17 of 20 MiB")
        self.assertEqual(quota.label(None, None), "Home: quota unknown")

    def test_home_alone_gives_the_level_and_says_state_is_unknown(self):
        s = quota.summary(live(17 * MiB, zone="warning"), None, "Connection refused", "/home/jovyan", True)
        self.assertEqual((s["level"], s["colour"], s["figures"]), ("warning", "warning", "home"))
        self.assertIn("could not be reached", " ".join(s["notes"]))
        s = quota.summary(live(20 * MiB, zone="full"), None, None, "/home/jovyan", False)
        self.assertEqual((s["level"], s["colour"]), ("full", "critical"))
        self.assertIn("No quota controller", " ".join(s["notes"]))

    def test_controller_alone_gives_figures_and_state(self):
        status = {
            "quota_state": "ok",
            "enforcement": "none",
            "record": {"actual_bytes": 5 * MiB, "quota_bytes": 20 * MiB},
        }
        s = quota.summary(None, status, None, "/home/jovyan", True)
        self.assertEqual((s["level"], s["figures"], s["label"]), ("ok", "controller", "Home 5 of 20 MiB"))
        self.assertIn("not a hubfs home", " ".join(s["notes"]))
        s = quota.summary(None, None, "refused", "/home/jovyan", True)
        self.assertEqual((s["level"], s["label"]), ("unknown", "Home: quota unknown"))

    def test_grace_and_cleanup_say_what_happens_when(self):
        status = {
            "quota_state": "lockout",
            "enforcement": "none",
            "next_enforcement": {
                "enforcement": "blocked",
                "level": "HARD_ADMIN",
                "at": "2026-12-20T12:00:00Z",
                "days_left": 14,
            },
            "record": {"actual_bytes": 25 * MiB, "quota_bytes": 20 * MiB},
        }
        s = quota.summary(None, status, None, "/h", True)
        self.assertEqual((s["level"], s["colour"]), ("grace", "critical"))
        self.assertIn("Your server will be stopped at Sun 20 Dec 2026 12:00 UTC", s["notice"]["message"])
        self.assertIn("14 days of grace left", s["notice"]["message"])
        status["enforcement"] = "cleanup"
        status["next_enforcement"]["days_left"] = 1
        s = quota.summary(live(19 * MiB, cleanup=True), status, None, "/h", True)
        self.assertEqual(s["level"], "cleanup")
        self.assertIn("you can delete files", s["notice"]["message"])
        self.assertIn("1 day of grace left", s["notice"]["message"])
        status["enforcement"] = "blocked"
        self.assertEqual(quota.summary(None, status, None, "/h", True)["level"], "blocked")


class Space(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.home = os.path.join(self.tmp.name, "home")
        os.makedirs(os.path.join(self.home, "big/deep"))
        os.makedirs(os.path.join(self.tmp.name, "outside"))
        with open(os.path.join(self.tmp.name, "outside/keep"), "w") as f:
            f.write("x" * 100)
        with open(os.path.join(self.home, "big/deep/f"), "w") as f:
            f.write("x" * 5000)
        with open(os.path.join(self.home, "small"), "w") as f:
            f.write("x" * 10)
        os.link(os.path.join(self.home, "big/deep/f"), os.path.join(self.home, "big/hardlink"))
        os.symlink(os.path.join(self.tmp.name, "outside"), os.path.join(self.home, "escape"))

    def tearDown(self):
        self.tmp.cleanup()

    def test_listing_biggest_first_with_the_walkers_rules(self):
        got = space.listing(self.home, "", hubfs=None)
        names = [e["name"] for e in got["entries"]]
        self.assertEqual(names[0], "big")
        big = got["entries"][0]
        self.assertEqual((big["bytes"], big["files"], big["kind"]), (5000, 1, "dir"), "hard link once")
        escape = [e for e in got["entries"] if e["name"] == "escape"][0]
        self.assertEqual(escape["kind"], "symlink")
        self.assertLess(escape["bytes"], 1000, "a symlink is not followed")
        self.assertEqual(space.listing(self.home, "big", hubfs=None)["path"], "big")

    def test_hostile_paths_are_refused(self):
        for bad in ["..", "../outside", "big/../../outside", "escape/keep", "a\0b"]:
            with self.assertRaises(space.SpaceError, msg=bad):
                space.delete(self.home, bad)
        with self.assertRaises(space.SpaceError):
            space.listing(self.home, "escape", hubfs=None)
        with self.assertRaises(space.SpaceError):
            space.delete(self.home, "")
        with self.assertRaises(space.SpaceError):
            space.delete(self.home, "nope")
        self.assertTrue(os.path.exists(os.path.join(self.tmp.name, "outside/keep")))

    def test_delete_removes_a_tree_and_a_symlink_as_a_link(self):
        space.delete(self.home, "escape")
        self.assertFalse(os.path.lexists(os.path.join(self.home, "escape")))
        self.assertTrue(os.path.exists(os.path.join(self.tmp.name, "outside/keep")))
        space.delete(self.home, "big")
        self.assertFalse(os.path.exists(os.path.join(self.home, "big")))
        self.assertEqual([e["name"] for e in space.listing(self.home, "")["entries"]], ["small"])


if __name__ == "__main__":
    unittest.main()
