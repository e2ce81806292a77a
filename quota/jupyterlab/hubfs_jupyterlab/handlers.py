"""The server extension's API, under ``<base_url>/hubfs/``:

* ``GET quota`` — the status bar's figures and level (``quota.summary``);
* ``GET space?path=REL`` — the biggest entries of a folder of the home
  (``space.listing``);
* ``POST delete`` ``{"path": REL}`` — deletes one of them (``space.delete``)
  and answers with the new figures.

Configuration is the notebook's environment, as KubeSpawner sets it:
``HOME``, ``JUPYTERHUB_USER``, ``HUBFS_CONTROLLER_URL`` (the controller's
HTTP API; unset: no state, only the home's figures), ``HUBFS_BIN`` (the
``hubfs`` binary; default: from ``PATH``), ``HUBFS_LAB_POLL_SECONDS``
(how often the frontend asks, default 3).
"""

import json
import os
import time
from urllib.parse import quote, urlencode

import tornado.ioloop
import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.httpclient import AsyncHTTPClient

from . import quota, space

#: The controller's answer is kept this long unless the home's zone or mode
#: changes first (then it is asked again at once).
CONTROLLER_TTL = 5.0
CONTROLLER_TIMEOUT = 3.0


class Settings:
    def __init__(self, env=None):
        env = os.environ if env is None else env
        self.home = env.get("HOME") or os.getcwd()
        self.user = env.get("JUPYTERHUB_USER") or env.get("USER") or ""
        self.controller = (env.get("HUBFS_CONTROLLER_URL") or "").rstrip("/")
        self.hubfs = env.get("HUBFS_BIN") or None
        self.poll_seconds = float(env.get("HUBFS_LAB_POLL_SECONDS") or 3)


class ControllerCache:
    """The last answer of the controller, asked again when it is older than
    ``CONTROLLER_TTL`` or the home crossed a line since."""

    def __init__(self):
        self.status = None
        self.error = None
        self.at = 0.0
        self.key = None

    async def get(self, settings, live):
        key = (live or {}).get("zone"), (live or {}).get("cleanup")
        if self.at and time.monotonic() - self.at < CONTROLLER_TTL and key == self.key:
            return self.status, self.error
        url = "%s/v1/users/%s" % (settings.controller, quote(settings.user, safe=""))
        if live and live["baseline"]:
            url += "?" + urlencode(
                {k: live[k] for k in ("bytes", "inodes", "quota_bytes", "quota_inodes")}
            )
        try:
            resp = await AsyncHTTPClient().fetch(
                url,
                request_timeout=CONTROLLER_TIMEOUT,
                connect_timeout=CONTROLLER_TIMEOUT,
                raise_error=False,
            )
            if resp.code in (200, 404):
                self.status, self.error = json.loads(resp.body), None
            else:
                self.status, self.error = None, "it answered HTTP %d" % resp.code
        except Exception as e:  # refused, DNS, timeout: the home still answers
            self.status, self.error = None, str(e) or type(e).__name__
        self.at, self.key = time.monotonic(), key
        return self.status, self.error


class QuotaHandler(APIHandler):
    def initialize(self, settings, cache):
        self.s = settings
        self.cache = cache

    @tornado.web.authenticated
    async def get(self):
        live = quota.read_live(self.s.home)
        status, error = None, None
        if self.s.controller and self.s.user:
            status, error = await self.cache.get(self.s, live)
        body = quota.summary(live, status, error, self.s.home, bool(self.s.controller))
        body["user"] = self.s.user
        body["poll_seconds"] = self.s.poll_seconds
        self.finish(json.dumps(body))


class SpaceHandler(APIHandler):
    def initialize(self, settings, cache):
        self.s = settings

    @tornado.web.authenticated
    async def get(self):
        rel = self.get_argument("path", "")
        try:
            # The walk runs in a thread: the server keeps serving meanwhile.
            body = await tornado.ioloop.IOLoop.current().run_in_executor(
                None, space.listing, self.s.home, rel, self.s.hubfs
            )
        except space.SpaceError as e:
            raise tornado.web.HTTPError(e.code, str(e), reason=str(e)) from None
        self.finish(json.dumps(body))


class DeleteHandler(APIHandler):
    def initialize(self, settings, cache):
        self.s = settings
        self.cache = cache

    @tornado.web.authenticated
    async def post(self):
        rel = (self.get_json_body() or {}).get("path", "")
        try:
            await tornado.ioloop.IOLoop.current().run_in_executor(None, space.delete, self.s.home, rel)
        except space.SpaceError as e:
            raise tornado.web.HTTPError(e.code, str(e), reason=str(e)) from None
        self.log.info("hubfs: deleted %s from %s", rel, self.s.home)
        self.finish(json.dumps({"deleted": rel, "live": quota.read_live(self.s.home)}))


def setup_handlers(server_app, settings=None):
    web_app = server_app.web_app
    settings = settings or Settings()
    cache = ControllerCache()
    base = url_path_join(web_app.settings["base_url"], "hubfs")
    args = {"settings": settings, "cache": cache}
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "quota"), QuotaHandler, args),
            (url_path_join(base, "space"), SpaceHandler, args),
            (url_path_join(base, "delete"), DeleteHandler, args),
        ],
    )
