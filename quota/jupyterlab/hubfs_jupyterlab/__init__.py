"""hubfs in JupyterLab: the home's quota in the status bar, notifications on
crossings, and a "What uses my space?" panel.

The server extension (``handlers``) answers the frontend plugin from the
live home (the ``user.hubfs.usage`` attribute of ``$HOME``) and the quota
controller (``$HUBFS_CONTROLLER_URL``); the frontend is the prebuilt
labextension shipped in ``labextension/``.
"""

__version__ = "0.1.0"


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "hubfs-jupyterlab"}]


def _jupyter_server_extension_points():
    return [{"module": "hubfs_jupyterlab"}]


def _load_jupyter_server_extension(server_app):
    from .handlers import setup_handlers

    setup_handlers(server_app)
    server_app.log.info("hubfs-jupyterlab: quota status, notifications and space panel enabled")
