// hubfs in JupyterLab: "Home 3.2 of 10 GiB" in the status bar (amber at the
// warning line, red when full, over quota or in cleanup mode), a
// notification when the home enters a new level, and the "What uses my
// space?" panel. Figures and words come from the server extension, which
// reads the live home and asks the quota controller.

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

import { getQuota, IQuota } from './api';
import { SpacePanel } from './space';

const OPEN_SPACE = 'hubfs:what-uses-my-space';

/** Levels that need no notification of their own. */
const QUIET = new Set(['unknown']);

class QuotaStatus extends Widget {
  constructor(onClick: () => void) {
    super({ node: document.createElement('div') });
    this.id = 'jp-hubfs-quota';
    this.addClass('jp-hubfs-quota');
    this.addClass('jp-hubfs-quota-unknown');
    this.node.textContent = 'Home …';
    this.node.onclick = onClick;
  }

  show_(q: IQuota): void {
    for (const c of ['ok', 'warning', 'critical', 'unknown']) {
      this.node.classList.toggle(`jp-hubfs-quota-${c}`, q.colour === c);
    }
    this.node.dataset.level = q.level;
    this.node.textContent = q.label;
    this.node.title = [q.notice.message, ...q.notes].join('\n');
  }
}

/**
 * Notifies once per level entered: the level last notified is kept per
 * user in localStorage, so a reload or a second tab does not repeat it.
 */
class Notifier {
  constructor(private openSpace: () => void) {}

  update(q: IQuota): void {
    const key = `hubfs-quota-level:${q.user}`;
    const last = window.localStorage.getItem(key);
    if (last === q.level || QUIET.has(q.level)) {
      return;
    }
    window.localStorage.setItem(key, q.level);
    if (q.level === 'ok' && (last === null || last === 'unknown')) {
      return; // nothing to say about a home that was never in trouble
    }
    Notification.emit(q.notice.message, q.notice.type, {
      autoClose: q.level === 'ok' ? 8000 : false,
      actions:
        q.level === 'ok'
          ? []
          : [{ label: 'What uses my space?', callback: () => this.openSpace() }],
      data: { hubfs: q.level }
    });
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'hubfs-jupyterlab:plugin',
  description: 'The hubfs home quota: status bar, notifications, "What uses my space?"',
  autoStart: true,
  requires: [IStatusBar],
  optional: [ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar,
    palette: ICommandPalette | null
  ) => {
    let panel: SpacePanel | null = null;
    let poll: () => Promise<void> = async () => undefined;
    const openSpace = () => void app.commands.execute(OPEN_SPACE);
    app.commands.addCommand(OPEN_SPACE, {
      label: 'What uses my space?',
      caption: 'The biggest folders and files of your home, to delete from',
      execute: async () => {
        if (!panel || panel.isDisposed) {
          panel = new SpacePanel(() => void poll());
          app.shell.add(panel, 'main');
        }
        app.shell.activateById(panel.id);
        await panel.open('');
      }
    });
    palette?.addItem({ command: OPEN_SPACE, category: 'hubfs' });

    const status = new QuotaStatus(openSpace);
    statusBar.registerStatusItem('hubfs-jupyterlab:quota', {
      item: status,
      align: 'left',
      rank: 100
    });
    const notifier = new Notifier(openSpace);
    let every = 3000;
    let timer = 0;
    poll = async () => {
      window.clearTimeout(timer);
      try {
        const q = await getQuota();
        status.show_(q);
        notifier.update(q);
        every = Math.max(500, q.poll_seconds * 1000);
      } catch (e) {
        status.node.textContent = 'Home: quota unknown';
        status.node.title = `The hubfs server extension did not answer: ${(e as Error).message}`;
      }
      timer = window.setTimeout(() => void poll(), every);
    };
    void poll();
  }
};

export default plugin;
