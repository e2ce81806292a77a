"""hubfs spawn hook: ask the quota controller before a server starts.

Use in the hub's config:

    import hubfs_spawn_hook
    c.Spawner.pre_spawn_hook = hubfs_spawn_hook.pre_spawn_hook

The controller URL comes from $HUBFS_QUOTA_URL (e.g.
http://hubfs-quota.hubfs-system.svc:9501). A user whose quota enforcement is
"blocked" (lockout under `lockoutMode: block`, or the graded policy's hard
enforcement) is refused with the controller's message saying why and what to
do. Everyone else starts; a user in cleanup mode starts too (their home
refuses writes until usage drops). If the controller cannot be reached or
answers nonsense, the spawn is allowed and a warning logged: quota must never
take the hub down with it.
"""

import json
import logging
import os
from urllib.parse import quote

from tornado import web
from tornado.httpclient import AsyncHTTPClient

log = logging.getLogger("hubfs.spawn_hook")

#: Seconds to wait for the controller before failing open.
TIMEOUT = float(os.environ.get("HUBFS_QUOTA_TIMEOUT", "5"))


def controller_url():
    return (
        os.environ.get("HUBFS_QUOTA_URL")
        or os.environ.get("HUBFS_CONTROLLER_URL")
        or "http://hubfs-quota:9501"
    ).rstrip("/")


async def quota_status(user_name):
    """The controller's status for a user, or None if unknown/unreachable."""
    url = "%s/v1/users/%s" % (controller_url(), quote(user_name, safe=""))
    try:
        resp = await AsyncHTTPClient().fetch(
            url, request_timeout=TIMEOUT, connect_timeout=TIMEOUT, raise_error=False
        )
    except Exception as e:  # DNS, refused, timeout: fail open
        log.warning("hubfs: quota controller unreachable at %s (%s); allowing spawn of %s", url, e, user_name)
        return None
    if resp.code == 404:
        return None  # never measured: nothing to enforce
    if resp.code != 200:
        log.warning("hubfs: quota controller answered %s for %s; allowing spawn", resp.code, user_name)
        return None
    try:
        return json.loads(resp.body)
    except ValueError as e:
        log.warning("hubfs: quota controller reply not JSON (%s); allowing spawn of %s", e, user_name)
        return None


async def pre_spawn_hook(spawner):
    name = spawner.user.name
    status = await quota_status(name)
    if not status or status.get("spawn_allowed", True):
        if status and status.get("enforcement") == "cleanup":
            log.info("hubfs: %s starts in cleanup mode (over quota, writes refused)", name)
        return
    message = status.get("message") or "Your home is over its storage quota."
    log.warning("hubfs: refusing spawn of %s: %s", name, message)
    text = "Storage quota: " + message
    # "%s" keeps a '%' in the message (e.g. "(105%)") out of tornado's formatting.
    e = web.HTTPError(403, "%s", text)
    # Shown on the spawn progress page by JupyterHub.
    e.jupyterhub_message = text
    raise e
